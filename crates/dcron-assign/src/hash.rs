//! Platform-independent hashing and the numeric helpers built on it.
//!
//! Everything here is a pure function of explicit bytes or explicit `u64`s: no `usize`, no
//! native endianness, no `RandomState`, no libm call. Two processes on different machines,
//! operating systems or CPU architectures compute bit-identical results, which is what lets
//! every node of a cluster agree on the owner of a task without talking to the others.

use std::hash::{BuildHasher, Hasher};

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable 64-bit hash every strategy of this crate is built on.
///
/// It is FNV-1a 64 over `bytes`, followed by the MurmurHash3 `fmix64` finalizer (FNV alone
/// distributes similar names such as `task-000041` / `task-000042` poorly in its low bits, and
/// strategies take the hash modulo small numbers). The result is the same in every process, on
/// every platform and in every release of this crate: the unit tests pin it with test vectors,
/// so changing it is a breaking change (it would move tasks between nodes during a rolling
/// upgrade).
///
/// ```
/// assert_eq!(dcron_assign::stable_hash(b"task-000042"), dcron_assign::stable_hash(b"task-000042"));
/// assert_ne!(dcron_assign::stable_hash(b"a"), dcron_assign::stable_hash(b"b"));
/// ```
pub fn stable_hash(bytes: &[u8]) -> u64 {
    fmix64(fnv1a(FNV_OFFSET, bytes))
}

/// FNV-1a 64 continued from `state` over `bytes`.
#[inline]
pub(crate) fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
#[inline]
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Hash of a member id, decorrelated from task hashes by `salt`.
#[inline]
pub(crate) fn member_seed(id: &str, salt: u64) -> u64 {
    fmix64(stable_hash(id.as_bytes()) ^ salt)
}

/// Score of the pair (key, member) for rendezvous hashing.
#[inline]
pub(crate) fn pair_score(key: u64, member_seed: u64) -> u64 {
    fmix64(key ^ member_seed)
}

/// Maps a 64-bit hash to a float strictly inside (0, 1), using its top 52 bits.
#[inline]
pub(crate) fn unit_open(h: u64) -> f64 {
    // (k + 0.5) / 2^52 with k < 2^52: k + 0.5 needs 53 significant bits, so it is exact in
    // f64 (with 53 bits of k, `2^53 - 1 + 0.5` would round up to 2^53 and give exactly 1.0).
    ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// Natural logarithm of `x` in (0, 1], using only IEEE-754 `+ - * /` (each correctly rounded,
/// hence bit-identical on every platform), unlike `f64::ln`, whose last bit depends on the
/// platform's libm. Accurate to a few ulps, which is plenty: callers only need a deterministic,
/// monotone-enough transform for weighted rendezvous.
pub(crate) fn ln_unit(x: f64) -> f64 {
    debug_assert!(x > 0.0 && x <= 1.0 && x.is_normal());
    let bits = x.to_bits();
    // x = m * 2^e with m in [1, 2).
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    // Bring m into [sqrt(1/2), sqrt(2)) so that the series below converges fast.
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln(m) = 2 * atanh(s) = 2 * (s + s^3/3 + s^5/5 + ...), |s| <= 0.1716.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut poly = 0.0;
    let mut k = 25.0_f64;
    while k >= 1.0 {
        poly = poly * s2 + 1.0 / k;
        k -= 2.0;
    }
    (e as f64) * std::f64::consts::LN_2 + 2.0 * s * poly
}

/// A `BuildHasher` for the `hashring` crate whose output is a pure function of the bytes
/// written, with every integer written little-endian and `usize` widened to `u64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StableBuildHasher;

impl BuildHasher for StableBuildHasher {
    type Hasher = StableHasher;

    fn build_hasher(&self) -> StableHasher {
        StableHasher(FNV_OFFSET)
    }
}

/// FNV-1a with little-endian integer writes and an `fmix64` finish.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StableHasher(u64);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0, bytes);
    }

    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }

    fn write_u16(&mut self, i: u16) {
        self.write(&i.to_le_bytes());
    }

    fn write_u32(&mut self, i: u32) {
        self.write(&i.to_le_bytes());
    }

    fn write_u64(&mut self, i: u64) {
        self.write(&i.to_le_bytes());
    }

    fn write_u128(&mut self, i: u128) {
        self.write(&i.to_le_bytes());
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_i8(&mut self, i: i8) {
        self.write_u8(i as u8);
    }

    fn write_i16(&mut self, i: i16) {
        self.write_u16(i as u16);
    }

    fn write_i32(&mut self, i: i32) {
        self.write_u32(i as u32);
    }

    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }

    fn write_i128(&mut self, i: i128) {
        self.write_u128(i as u128);
    }

    fn write_isize(&mut self, i: isize) {
        self.write_u64(i as i64 as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // From the FNV reference test suite (http://www.isthe.com/chongo/tech/comp/fnv/).
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fmix64_is_pinned() {
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(fmix64(u64::MAX), 0x64b5_720b_4b82_5f21);
    }

    #[test]
    fn stable_hash_is_pinned() {
        // Cross-checked against an independent implementation (Python, from the FNV and
        // MurmurHash3 definitions). These values are part of the crate's contract: all nodes of a cluster, on any
        // platform and any version of this crate, must agree. Never update them casually.
        let vectors: [(&[u8], u64); 6] = [
            (b"", 0xefd0_1f60_ba99_2926),
            (b"a", 0x82a2_a958_a9be_ce5b),
            (b"foobar", 0x2c22_1949_22d1_672b),
            (b"task-000042", 0x52bd_8bea_6ce2_181c),
            (b"node-1", 0x91dd_3f4c_04e1_eb05),
            ("tâche-é".as_bytes(), 0x1462_1270_b50b_eb7b),
        ];
        for (input, expected) in vectors {
            assert_eq!(
                stable_hash(input),
                expected,
                "stable_hash({:?}) = {:#018x}",
                String::from_utf8_lossy(input),
                stable_hash(input)
            );
        }
    }

    #[test]
    fn stable_hasher_writes_integers_little_endian() {
        let mut a = StableBuildHasher.build_hasher();
        a.write_u64(0x0102_0304_0506_0708);
        let mut b = StableBuildHasher.build_hasher();
        b.write(&[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(a.finish(), b.finish());

        let mut c = StableBuildHasher.build_hasher();
        c.write_usize(7);
        let mut d = StableBuildHasher.build_hasher();
        d.write_u64(7);
        assert_eq!(c.finish(), d.finish());
    }

    #[test]
    fn unit_open_stays_inside_the_open_interval() {
        assert!(unit_open(0) > 0.0);
        assert!(unit_open(u64::MAX) < 1.0);
        assert!(unit_open(1 << 63) > 0.49 && unit_open(1 << 63) < 0.51);
    }

    #[test]
    fn ln_unit_agrees_with_libm() {
        let mut x = 1.0_f64;
        while x > 1e-16 {
            for probe in [x, x * 0.7072, x * 0.9999, x * 0.5001, x * 0.75] {
                let expected = probe.ln();
                let got = ln_unit(probe);
                let tolerance = 4.0 * f64::EPSILON * expected.abs().max(1.0);
                assert!(
                    (got - expected).abs() <= tolerance,
                    "ln({probe}) = {expected}, ln_unit = {got}"
                );
            }
            x *= 0.37;
        }
        assert_eq!(ln_unit(1.0), 0.0);
        assert!((ln_unit(unit_open(0)) - unit_open(0).ln()).abs() < 1e-12);
    }

    #[test]
    fn ln_unit_is_pinned() {
        // Bit patterns, so that a platform difference would show up here first.
        assert_eq!(ln_unit(0.5).to_bits(), (-std::f64::consts::LN_2).to_bits());
        assert_eq!(
            ln_unit(0.25).to_bits(),
            (-2.0 * std::f64::consts::LN_2).to_bits()
        );
    }
}
