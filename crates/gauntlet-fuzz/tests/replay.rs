//! Replays the fuzz corpus without libFuzzer: every seed, every crash input kept
//! under `fuzz/regressions/<target>/` (each one a bug that was fixed), and a
//! seeded batch of truncations and byte flips of every seed. A panic anywhere
//! fails the test; so does a target that lost its seeds or its harness binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && !p.ends_with("README.md"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn every_target_has_seeds_and_a_harness_binary() {
    let harness = std::fs::read_to_string(repo().join("fuzz/Cargo.toml")).unwrap();
    for (name, _) in gauntlet_fuzz::TARGETS {
        assert!(
            !files(&repo().join("fuzz/seeds").join(name)).is_empty(),
            "fuzz/seeds/{name} is empty: run `cargo run -p gauntlet-fuzz --example make_seeds`"
        );
        assert!(
            repo()
                .join(format!("fuzz/fuzz_targets/{name}.rs"))
                .is_file()
                && harness.contains(&format!("name = \"{name}\"")),
            "fuzz target {name} has no harness binary in fuzz/"
        );
    }
    let binaries = harness.matches("[[bin]]").count();
    assert_eq!(
        binaries,
        gauntlet_fuzz::TARGETS.len(),
        "fuzz/Cargo.toml and gauntlet_fuzz::TARGETS list different targets"
    );
}

/// Seeds are valid inputs (the fuzzer starts past the error paths) unless their
/// name says they are meant to be refused (`reject-*`): a format change that
/// makes the parsers refuse the seeds fails here, not silently in the fuzzer.
#[test]
fn seeds_are_accepted_unless_named_reject() {
    for (name, target) in gauntlet_fuzz::TARGETS {
        for seed in files(&repo().join("fuzz/seeds").join(name)) {
            let bytes = std::fs::read(&seed).unwrap();
            let meant_to_fail = seed
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("reject-"));
            assert_eq!(
                target(&bytes),
                !meant_to_fail,
                "{name}: seed {} was {}",
                seed.display(),
                if meant_to_fail { "accepted" } else { "refused" }
            );
        }
    }
}

#[test]
fn seeds_and_regressions_replay_without_panicking() {
    let mut replayed = 0;
    for (name, target) in gauntlet_fuzz::TARGETS {
        for dir in ["seeds", "regressions"] {
            for file in files(&repo().join("fuzz").join(dir).join(name)) {
                let bytes = std::fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&bytes));
                assert!(outcome.is_ok(), "{name} panicked on {}", file.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= gauntlet_fuzz::TARGETS.len());
}

/// Cheap mutations of the seeds on every test run: the long fuzzing runs happen
/// in `fuzz/run.sh`, but a parser change that panics on a truncated or flipped
/// seed fails here first.
#[test]
fn mutated_seeds_never_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for (name, target) in gauntlet_fuzz::TARGETS {
        // Each load_model input runs a forward and backward pass; fewer of them.
        let per_seed = if *name == "load_model" { 6 } else { 24 };
        for seed in files(&repo().join("fuzz/seeds").join(name)) {
            let bytes = std::fs::read(&seed).unwrap();
            for round in 0..per_seed {
                let mut mutant = bytes.clone();
                if round % 3 == 0 {
                    mutant.truncate(rng.random_range(0..=bytes.len()));
                } else {
                    for _ in 0..rng.random_range(1..=4) {
                        if mutant.is_empty() {
                            break;
                        }
                        let at = rng.random_range(0..mutant.len());
                        mutant[at] = if round % 3 == 1 {
                            rng.random()
                        } else {
                            // Interesting values: size fields become huge, zero or negative.
                            [0x00, 0x7f, 0x80, 0xff][rng.random_range(0..4)]
                        };
                    }
                }
                let outcome = std::panic::catch_unwind(|| target(&mutant));
                if outcome.is_err() {
                    let kept = std::env::temp_dir().join(format!("gauntlet-fuzz-{name}-mutant"));
                    std::fs::write(&kept, &mutant).unwrap();
                    panic!(
                        "{name} panicked on a mutant of {} (kept at {})",
                        seed.display(),
                        kept.display()
                    );
                }
            }
        }
    }
}
