//! Bad input never panics: cron strings, time zones, task names, `TaskMeta` bytes read from a
//! registry, and payloads each get a typed error (or are accepted), and a refused write leaves
//! what was stored intact.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::memory::MemoryRegistry;
use dcron_core::{
    validate_task_name, Dcron, Error, PutMode, Registry, Schedule, SecondsField, TaskMeta,
    MAX_TASK_NAME_BYTES,
};
use proptest::prelude::*;

fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn seconds_mode() -> impl Strategy<Value = SecondsField> {
    prop_oneof![
        Just(SecondsField::Optional),
        Just(SecondsField::Required),
        Just(SecondsField::Disallowed),
    ]
}

/// One cron field: valid pieces, near-valid pieces and junk.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        Just("L".to_string()),
        Just("5L".to_string()),
        Just("15W".to_string()),
        Just("MON#2".to_string()),
        Just("JAN-DEC".to_string()),
        Just("*/0".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("1-".to_string()),
        Just(",".to_string()),
        Just("#".to_string()),
        (0u32..100).prop_map(|n| n.to_string()),
        (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}-{b}")),
        (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}/{b}")),
        (0u32..70, 0u32..70, 0u32..70).prop_map(|(a, b, c)| format!("{a}-{b}/{c}")),
        "[A-Za-z0-9*?/,#LW-]{1,6}",
    ]
}

fn near_cron() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(field(), 0..9).prop_map(|f| f.join(" ")),
        prop::collection::vec(field(), 5..8).prop_map(|f| f.join("\t")),
        "@(every|at|once|hourly|daily|yearly|secondly|reboot|) ?[0-9a-z:.+-]{0,24}",
        (any::<u64>(), "(ms|s|m|h|d|x|)").prop_map(|(n, u)| format!("@every {n}{u}")),
        "\\PC{0,40}",
    ]
}

fn zone() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("UTC".to_string())),
        Just(Some("Europe/Berlin".to_string())),
        Just(Some("Australia/Lord_Howe".to_string())),
        Just(Some(String::new())),
        "\\PC{0,24}".prop_map(Some),
        "[A-Z][a-z]{2,8}/[A-Z][a-z]{2,10}".prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_string_parses_or_is_an_invalid_schedule(expr in "\\PC{0,60}", seconds in seconds_mode()) {
        match Schedule::parse(&expr, None, seconds) {
            Ok(s) => {
                let next = s.next_after(base());
                prop_assert!(next.is_none_or(|n| n > base()));
            }
            Err(Error::InvalidSchedule { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn near_valid_cron_parses_or_is_an_invalid_schedule(
        expr in near_cron(),
        zone in zone(),
        seconds in seconds_mode(),
    ) {
        match Schedule::parse(&expr, zone.as_deref(), seconds) {
            Ok(s) => {
                let next = s.next_after(base());
                prop_assert!(next.is_none_or(|n| n > base()));
                let window = s.occurrences_in(base(), base() + chrono::Duration::hours(1), 50);
                prop_assert!(window.len() <= 50);
                prop_assert!(window.windows(2).all(|w| w[0] < w[1]));
                if let Some(latest) = s.latest_at_or_before(base()) {
                    prop_assert!(latest <= base());
                }
            }
            Err(Error::InvalidSchedule { .. } | Error::InvalidTimeZone { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn task_names_are_accepted_exactly_by_the_rules(name in "\\PC{0,80}|.{0,8}|[a-z/]{0,210}") {
        let rules = !name.is_empty()
            && name.len() <= MAX_TASK_NAME_BYTES
            && !name.chars().any(char::is_control)
            && !name.contains('/');
        match validate_task_name(&name) {
            Ok(()) => prop_assert!(rules, "accepted {name:?}"),
            Err(Error::InvalidTaskName { .. }) => prop_assert!(!rules, "refused {name:?}"),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn arbitrary_bytes_decode_or_are_corrupt(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        match TaskMeta::decode("k", &bytes) {
            Ok(meta) => prop_assert_eq!(TaskMeta::decode("k", &meta.encode()).ok(), Some(meta)),
            Err(Error::Corrupt { key, .. }) => prop_assert_eq!(key, "k"),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn mutated_records_decode_or_are_corrupt(
        payload in "\\PC{0,40}",
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = TaskMeta::new("job", "*/5 * * * * *")
            .with_payload(payload)
            .with_time_zone("Europe/Berlin")
            .encode();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        match TaskMeta::decode("job", &bytes) {
            Ok(_) | Err(Error::Corrupt { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn put_task_refuses_bad_names_and_keeps_what_is_stored(
        name in "\\PC{0,40}|[a-z/]{0,210}|.{0,4}",
        payload in "\\PC{0,200}",
        cron in near_cron(),
    ) {
        let rt = runtime();
        rt.block_on(async {
            let reg = MemoryRegistry::new();
            let keep = dcron_testkit::task_meta("kept", "@hourly").with_payload("intact");
            reg.put_task(&keep, PutMode::CreateOnly).await.expect("seed record");
            let meta = dcron_testkit::task_meta(name.clone(), cron).with_payload(payload);
            match reg.put_task(&meta, PutMode::CreateOnly).await {
                Ok(()) => {
                    prop_assert!(validate_task_name(&name).is_ok());
                    prop_assert_eq!(reg.get_task(&name).await.expect("get"), Some(meta));
                }
                Err(Error::InvalidTaskName { .. }) => prop_assert!(validate_task_name(&name).is_err()),
                Err(Error::AlreadyExists { .. }) => prop_assert_eq!(name.as_str(), "kept"),
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
            let listed = reg.list_tasks().await.expect("list");
            prop_assert!(listed.corrupt.is_empty());
            prop_assert!(listed.items.contains(&keep));
            Ok(())
        })?;
    }

    #[test]
    fn corrupt_bytes_in_the_registry_are_reported_not_fatal(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let rt = runtime();
        rt.block_on(async {
            let reg = MemoryRegistry::new();
            let keep = dcron_testkit::task_meta("kept", "@hourly");
            reg.put_task(&keep, PutMode::CreateOnly).await.expect("seed record");
            reg.inject_raw_task("raw", bytes.clone());
            let decodes = TaskMeta::decode("raw", &bytes).is_ok();
            match reg.get_task("raw").await {
                Ok(Some(_)) => prop_assert!(decodes),
                Err(Error::Corrupt { .. }) => prop_assert!(!decodes),
                other => prop_assert!(false, "unexpected {other:?}"),
            }
            let listed = reg.list_tasks().await.expect("list");
            prop_assert!(listed.items.contains(&keep));
            prop_assert_eq!(listed.corrupt.len(), usize::from(!decodes));
            Ok(())
        })?;
    }

    #[test]
    fn add_task_meta_answers_a_typed_error(
        name in "\\PC{0,30}|[a-z/]{0,8}",
        cron in near_cron(),
        zone in zone(),
        payload in "\\PC{0,100}",
    ) {
        let rt = runtime();
        rt.block_on(async {
            let node = Dcron::builder(MemoryRegistry::new())
                .ttl(Duration::from_secs(5))
                .task_run_fn(|_| async { Ok(()) })
                .build()
                .expect("node");
            let mut meta = TaskMeta::new(name.clone(), cron.clone()).with_payload(payload);
            meta.time_zone = zone.clone();
            match node.add_task_meta(meta).await {
                Ok(()) => {
                    prop_assert!(validate_task_name(&name).is_ok());
                    prop_assert!(Schedule::parse(&cron, zone.as_deref(), SecondsField::Optional).is_ok());
                }
                Err(Error::InvalidTaskName { .. }) => prop_assert!(validate_task_name(&name).is_err()),
                Err(Error::InvalidSchedule { .. } | Error::InvalidTimeZone { .. }) => {
                    prop_assert!(Schedule::parse(&cron, zone.as_deref(), SecondsField::Optional).is_err());
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
            node.stop().await.expect("stop");
            Ok(())
        })?;
    }
}
