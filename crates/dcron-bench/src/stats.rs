//! Percentiles and distributions of lateness samples (microseconds).

/// A sorted set of samples in microseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Distribution {
    sorted: Vec<i64>,
}

impl Distribution {
    /// Sorts `samples` into a distribution.
    pub fn new(mut samples: Vec<i64>) -> Self {
        samples.sort_unstable();
        Distribution { sorted: samples }
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The nearest-rank quantile `q` in `[0, 1]`; `None` without samples.
    ///
    /// ```
    /// use dcron_bench::stats::Distribution;
    /// let d = Distribution::new((1..=100).collect());
    /// assert_eq!(d.quantile(0.5), Some(50));
    /// assert_eq!(d.quantile(0.99), Some(99));
    /// assert_eq!(d.quantile(1.0), Some(100));
    /// ```
    pub fn quantile(&self, q: f64) -> Option<i64> {
        if self.sorted.is_empty() {
            return None;
        }
        let n = self.sorted.len();
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        Some(self.sorted[rank.clamp(1, n) - 1])
    }

    /// The largest sample.
    pub fn max(&self) -> Option<i64> {
        self.sorted.last().copied()
    }

    /// The smallest sample.
    pub fn min(&self) -> Option<i64> {
        self.sorted.first().copied()
    }

    /// The mean, 0 without samples.
    pub fn mean(&self) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        self.sorted.iter().map(|&v| v as f64).sum::<f64>() / self.sorted.len() as f64
    }

    /// The samples, sorted.
    pub fn samples(&self) -> &[i64] {
        &self.sorted
    }

    /// At most `points` points `(value, fraction of samples <= value)` of the empirical CDF,
    /// evenly spaced in rank, always including the maximum.
    pub fn cdf(&self, points: usize) -> Vec<(i64, f64)> {
        let n = self.sorted.len();
        if n == 0 || points == 0 {
            return Vec::new();
        }
        let step = (n / points).max(1);
        let mut out: Vec<(i64, f64)> = (step - 1..n)
            .step_by(step)
            .map(|i| (self.sorted[i], (i + 1) as f64 / n as f64))
            .collect();
        if out.last().map(|p| p.1) != Some(1.0) {
            out.push((self.sorted[n - 1], 1.0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_small_sets() {
        let d = Distribution::new(vec![5, 1, 3]);
        assert_eq!(d.quantile(0.0), Some(1));
        assert_eq!(d.quantile(0.5), Some(3));
        assert_eq!(d.quantile(0.99), Some(5));
        assert_eq!(d.max(), Some(5));
        assert_eq!(d.min(), Some(1));
        assert!((d.mean() - 3.0).abs() < 1e-9);
        assert_eq!(Distribution::default().quantile(0.5), None);
    }

    #[test]
    fn cdf_ends_at_one() {
        let d = Distribution::new((0..1000).collect());
        let cdf = d.cdf(10);
        assert_eq!(cdf.len(), 10);
        assert_eq!(cdf.last(), Some(&(999, 1.0)));
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(Distribution::new(vec![7]).cdf(100), vec![(7, 1.0)]);
    }
}
