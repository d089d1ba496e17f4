//! The evaluation journal: `DIR/journal.jsonl`, one line per finished attack batch,
//! appended and synced as the run goes, so a run stopped by a crash, `kill -9`,
//! a full disk or Ctrl-C can be resumed and ends with the same record.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BatchOutcome, Error, Journal, Result, RobustConfig, SuiteAttack};

/// The journal's file name inside the output directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// 2: attack random streams keyed by name and occurrence instead of suite
/// position, so a journal of version 1 would replay draws this build never makes.
const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Header {
    gauntlet_journal: u32,
    /// sha256 of everything that decides the results (model, data, suite, seed, ...).
    fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    outcome: BatchOutcome,
}

/// sha256 of everything that decides an evaluation's results (tool version, model,
/// data, split, shard, seed, batch size, kept examples, suite): a journal written
/// for another evaluation is never replayed into this one.
pub fn journal_fingerprint(
    model_sha256: &str,
    data: &gauntlet_data::Dataset,
    shard: Option<&gauntlet_record::ShardRecord>,
    config: &RobustConfig,
    suite: &gauntlet_record::SuiteRecord,
    attacks: &[SuiteAttack],
) -> String {
    gauntlet_core::sha256_bytes(
        format!(
            "{}|{}|{}|{}|{}|{:?}|{}|{}|{}|{:?}|{:?}",
            env!("CARGO_PKG_VERSION"),
            model_sha256,
            data.sha256(),
            data.split().as_str(),
            data.len(),
            shard,
            config.seed,
            config.batch_size,
            config.keep_examples,
            suite,
            attacks
        )
        .as_bytes(),
    )
}

/// A journal file being appended to (one JSON line per finished batch, synced).
pub struct FileJournal {
    path: PathBuf,
    file: File,
    done: HashMap<String, BatchOutcome>,
    stop: Option<Arc<AtomicBool>>,
}

impl FileJournal {
    /// Start a new journal in `dir` (replacing any left by an earlier run), or with
    /// `resume`, continue the one there, which must be for the same `fingerprint`.
    pub fn open(dir: &Path, fingerprint: &str, resume: bool) -> Result<Self> {
        let path = dir.join(JOURNAL_FILE);
        if !resume {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Journal(format!("cannot create {}: {e}", dir.display())))?;
            let mut file = File::create(&path)
                .map_err(|e| Error::Journal(format!("cannot create {}: {e}", path.display())))?;
            let header = serde_json::to_string(&Header {
                gauntlet_journal: VERSION,
                fingerprint: fingerprint.into(),
            })
            .map_err(|e| Error::Journal(e.to_string()))?;
            writeln!(file, "{header}")
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::Journal(format!("cannot write {}: {e}", path.display())))?;
            return Ok(Self {
                path,
                file,
                done: HashMap::new(),
                stop: None,
            });
        }
        if !path.is_file() {
            return Err(Error::Journal(format!(
                "nothing to resume in {}: no {JOURNAL_FILE} (the run finished, or never started there)",
                dir.display()
            )));
        }
        let text = gauntlet_core::read_text_limited(&path, u64::MAX, "journal").map_err(|e| {
            Error::Journal(format!("{e} (start afresh with --out instead of --resume)"))
        })?;
        let mut lines = text.split_inclusive('\n');
        let header_line = lines.next().unwrap_or("");
        let header: Header = serde_json::from_str(header_line.trim_end()).map_err(|e| {
            Error::Journal(format!(
                "{} is not a Gauntlet journal (first line: {e})",
                path.display()
            ))
        })?;
        if header.gauntlet_journal != VERSION {
            return Err(Error::Journal(format!(
                "{} has journal version {}, this build reads version {VERSION}",
                path.display(),
                header.gauntlet_journal
            )));
        }
        if header.fingerprint != fingerprint {
            return Err(Error::Journal(format!(
                "{} was written by a different evaluation (Gauntlet version, model, data, suite, seed, batch size or shard differ); resume with the same arguments, or start afresh with --out instead of --resume",
                path.display()
            )));
        }
        // Keep every complete line; a last line cut short by a crash is dropped
        // (and overwritten by the next append).
        let mut done = HashMap::new();
        let mut good_bytes = header_line.len() as u64;
        for (number, line) in lines.enumerate() {
            let last = good_bytes + line.len() as u64 == text.len() as u64;
            match serde_json::from_str::<Entry>(line.trim_end()) {
                Ok(entry) if line.ends_with('\n') => {
                    done.insert(entry.key, entry.outcome);
                    good_bytes += line.len() as u64;
                }
                _ if last => break,
                _ => {
                    return Err(Error::Journal(format!(
                        "{} is corrupt at line {}: not a journal entry (start afresh with --out instead of --resume)",
                        path.display(),
                        number + 2
                    )))
                }
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::Journal(format!("cannot reopen {}: {e}", path.display())))?;
        file.set_len(good_bytes)
            .map_err(|e| Error::Journal(format!("cannot trim {}: {e}", path.display())))?;
        Ok(Self {
            path,
            file,
            done,
            stop: None,
        })
    }

    /// Stop the run before its next batch once `flag` is set (e.g. by a Ctrl-C
    /// handler); every finished batch stays in the journal.
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Batches found on resume.
    pub fn resumed_batches(&self) -> usize {
        self.done.len()
    }

    /// The run finished and its record is written: the journal is no longer needed.
    pub fn finish(self) -> Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.path).map_err(|e| {
            Error::Journal(format!(
                "cannot remove finished journal {}: {e}",
                self.path.display()
            ))
        })
    }
}

impl Journal for FileJournal {
    fn replay(&mut self, key: &str) -> Option<BatchOutcome> {
        self.done.remove(key)
    }

    fn record(&mut self, key: &str, outcome: &BatchOutcome) -> Result<()> {
        let line = serde_json::to_string(&Entry {
            key: key.into(),
            outcome: outcome.clone(),
        })
        .map_err(|e| Error::Journal(e.to_string()))?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::Journal(format!("cannot append to {}: {e}", self.path.display())))
    }

    fn interrupted(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn outcome(sample: usize) -> BatchOutcome {
        BatchOutcome {
            samples: vec![sample],
            broken: vec![(sample, 0.25)],
            ..BatchOutcome::default()
        }
    }

    #[test]
    fn resume_keeps_complete_lines_drops_a_torn_tail_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = FileJournal::open(dir.path(), "abc", false).unwrap();
        journal.record("batch-0", &outcome(0)).unwrap();
        journal.record("batch-1", &outcome(1)).unwrap();
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        let complete = std::fs::read(&path).unwrap();
        // A torn last line is dropped and trimmed off before new appends.
        let mut torn = complete.clone();
        torn.extend(b"{\"key\":\"batch-2\",\"outc");
        std::fs::write(&path, &torn).unwrap();
        let mut resumed = FileJournal::open(dir.path(), "abc", true).unwrap();
        assert_eq!(resumed.resumed_batches(), 2);
        assert_eq!(resumed.replay("batch-1"), Some(outcome(1)));
        assert_eq!(resumed.replay("batch-1"), None, "each batch replays once");
        resumed.record("batch-2", &outcome(2)).unwrap();
        drop(resumed);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        // Another evaluation's journal, and a corrupt line in the middle, are refused.
        let err = FileJournal::open(dir.path(), "xyz", true).err().unwrap();
        assert!(format!("{err}").contains("different evaluation"), "{err}");
        let mut corrupt = complete;
        corrupt.extend(b"garbage\n");
        corrupt.extend(
            serde_json::to_string(&Entry {
                key: "batch-3".into(),
                outcome: outcome(3),
            })
            .unwrap()
            .as_bytes(),
        );
        corrupt.push(b'\n');
        std::fs::write(&path, corrupt).unwrap();
        let err = FileJournal::open(dir.path(), "abc", true).err().unwrap();
        assert!(format!("{err}").contains("corrupt at line 4"), "{err}");
        // No journal at all: nothing to resume.
        let empty = tempfile::tempdir().unwrap();
        let err = FileJournal::open(empty.path(), "abc", true).err().unwrap();
        assert!(format!("{err}").contains("nothing to resume"), "{err}");
    }
}
