//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through each target's check:
//! every input the fuzzer kept must still be handled without a panic.

#[test]
fn the_fuzz_corpus_replays_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, check) in fuzzing::TARGETS {
        let dir = root.join(name);
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .collect();
        assert!(!entries.is_empty(), "{name}: empty corpus");
        for entry in entries {
            let data = std::fs::read(entry.path()).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", entry.path().display());
        }
    }
}
