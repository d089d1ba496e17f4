//! `gauntlet poison inject`: a poisoned copy of a dataset and its manifest.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_data::Split;

use super::fresh_out_dir;
use super::options::{injection_config, InjectionArgs};
use crate::toolbox::{load_data, DataArgs};

#[derive(Args, Debug)]
pub(crate) struct InjectArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    injection: InjectionArgs,
    /// New dataset directory (x_train.npy, y_train.npy, x_test.npy, y_test.npy, manifest.json); must not exist.
    #[arg(long)]
    out: PathBuf,
}

pub(super) fn inject(args: InjectArgs) -> Result<()> {
    fresh_out_dir(&args.out)?;
    let settings = injection_config(&args.injection)?;
    let train = load_data(&args.data, Split::Train, None)?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test = load_data(&test_args, Split::Test, None)?;
    let poisoned = gauntlet_poison::inject(&train, &settings)?;
    // Write into a temporary sibling directory and rename it into place: the output
    // appears whole or not at all.
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".gauntlet-inject-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging directory in {}", parent.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = staging.path().join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    let (x_train, y_train) = poisoned.dataset.to_npy()?;
    write("x_train.npy", &x_train)?;
    write("y_train.npy", &y_train)?;
    let (x_test, y_test) = test.to_npy()?;
    write("x_test.npy", &x_test)?;
    write("y_test.npy", &y_test)?;
    let reloaded = gauntlet_data::load(
        staging.path(),
        &gauntlet_data::LoadOptions {
            split: Split::Train,
            limit: None,
            num_classes: Some(train.num_classes()),
            ..Default::default()
        },
    )?;
    let mut manifest = poisoned.manifest;
    manifest.poisoned_sha256 = reloaded.sha256().into();
    write("manifest.json", manifest.to_json()?.as_bytes())?;
    let staged = staging.keep();
    std::fs::rename(&staged, &args.out)
        .with_context(|| format!("cannot move the new dataset into {}", args.out.display()))?;
    println!(
        "poisoned {} of {} training samples ({}{}); wrote {} with manifest.json",
        manifest.indices.len(),
        train.len(),
        settings.attack.name(),
        settings
            .target
            .map(|t| format!(" → class {t}"))
            .unwrap_or_default(),
        args.out.display()
    );
    Ok(())
}
