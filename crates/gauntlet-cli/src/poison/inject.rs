//! `gauntlet poison inject`: a poisoned copy of a dataset and its manifest.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use gauntlet_data::Split;
use gauntlet_poison::InjectJob;

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
    let injection = injection_config(&args.injection)?;
    let train_set = load_data(&args.data, Split::Train, None)?;
    let test_args = DataArgs {
        limit: None,
        ..args.data.clone()
    };
    let test_set = load_data(&test_args, Split::Test, None)?;
    let samples = train_set.len();
    let (attack, target) = (injection.attack.name(), injection.target);
    let manifest = InjectJob {
        train_set,
        test_set,
        injection,
        out: args.out.clone(),
    }
    .plan()?
    .run()?;
    let target = target.map(|t| format!(" → class {t}"));
    println!(
        "poisoned {} of {samples} training samples ({attack}{}); wrote {} with manifest.json",
        manifest.indices.len(),
        target.as_deref().unwrap_or(""),
        args.out.display()
    );
    Ok(())
}
