//! The closed sets a record names: norms, attack kinds, warning codes, splits,
//! file formats and scan severities. Each
//! is an enum serialised by the names the schema documents, with one table
//! (`ALL`) from which its names, parsers and documentation lists derive.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The norm that measures a perturbation (`linf`, `l2`, `l1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Largest absolute change of any input value.
    Linf,
    /// Euclidean length of the perturbation.
    L2,
    /// Sum of the absolute changes: the sparse threat model of Croce & Hein
    /// 2021, "Mind the box: l1-APGD for sparse adversarial attacks".
    L1,
}

impl Norm {
    /// Every norm, in the order reports list them.
    pub const ALL: [Norm; 3] = [Norm::Linf, Norm::L2, Norm::L1];

    /// The name in records, policies and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
            Norm::L1 => "l1",
        }
    }

    /// The mathematical symbol reports print (`L∞`, `L2`, `L1`).
    pub fn symbol(self) -> &'static str {
        match self {
            Norm::Linf => "L∞",
            Norm::L2 => "L2",
            Norm::L1 => "L1",
        }
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an attack's result is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Searches within a given ε-ball; success is judged per ε.
    FixedEpsilon,
    /// Searches for the smallest perturbation; reports a norm per sample.
    MinimalPerturbation,
}

impl AttackKind {
    /// Both kinds.
    pub const ALL: [AttackKind; 2] = [AttackKind::FixedEpsilon, AttackKind::MinimalPerturbation];

    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::FixedEpsilon => "fixed-epsilon",
            AttackKind::MinimalPerturbation => "minimal-perturbation",
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A sanity check an evaluation failed: the signs of gradient masking and
/// broken evaluations listed by Carlini et al. 2019, "On Evaluating
/// Adversarial Robustness".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningCode {
    /// The model's outputs look like probabilities, which flattens gradients.
    ProbabilitiesNotLogits,
    /// Two forward passes on the same input disagree.
    NonDeterministicForward,
    /// Gradients are zero or NaN on many inputs.
    ZeroOrNanGradients,
    /// A black-box attack broke samples the white-box attacks did not.
    BlackBoxBeatsWhiteBox,
    /// Robust accuracy rises from one ε to a larger one.
    RobustAccuracyRisesWithEpsilon,
    /// Accuracy stays above chance at an ε that allows any image.
    AccuracyAboveChanceAtHugeEpsilon,
}

impl WarningCode {
    /// Every code, in the order `docs/record-schema.md` lists them.
    pub const ALL: [WarningCode; 6] = [
        WarningCode::ProbabilitiesNotLogits,
        WarningCode::NonDeterministicForward,
        WarningCode::ZeroOrNanGradients,
        WarningCode::BlackBoxBeatsWhiteBox,
        WarningCode::RobustAccuracyRisesWithEpsilon,
        WarningCode::AccuracyAboveChanceAtHugeEpsilon,
    ];

    /// The stable identifier in records.
    pub fn name(self) -> &'static str {
        match self {
            WarningCode::ProbabilitiesNotLogits => "probabilities-not-logits",
            WarningCode::NonDeterministicForward => "non-deterministic-forward",
            WarningCode::ZeroOrNanGradients => "zero-or-nan-gradients",
            WarningCode::BlackBoxBeatsWhiteBox => "black-box-beats-white-box",
            WarningCode::RobustAccuracyRisesWithEpsilon => "robust-accuracy-rises-with-epsilon",
            WarningCode::AccuracyAboveChanceAtHugeEpsilon => {
                "accuracy-above-chance-at-huge-epsilon"
            }
        }
    }
}

impl fmt::Display for WarningCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which part of a dataset was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split.
    Train,
    /// The held-out test split.
    Test,
}

impl Split {
    /// Both splits.
    pub const ALL: [Self; 2] = [Self::Train, Self::Test];

    /// `"train"` or `"test"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The on-disk format a dataset was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// MNIST-style IDX files.
    Idx,
    /// CIFAR-10 binary batches.
    #[serde(rename = "cifar10-binary")]
    Cifar10Binary,
    /// A NumPy `.npz` archive.
    Npz,
    /// A directory of NumPy `.npy` files.
    Npy,
    /// A folder of image files (torchvision's `ImageFolder`, or a labels CSV).
    ImageFolder,
    /// CIFAR-10 python batches (`cifar-10-batches-py`: pickled dicts).
    #[serde(rename = "cifar10-python")]
    Cifar10Python,
    /// CIFAR-100 python files (`cifar-100-python`: pickled dicts).
    #[serde(rename = "cifar100-python")]
    Cifar100Python,
    /// CIFAR-100 binary files (`cifar-100-binary`).
    #[serde(rename = "cifar100-binary")]
    Cifar100Binary,
}

impl DataFormat {
    /// Every format, in the order the loader tries them.
    pub const ALL: [Self; 8] = [
        Self::Idx,
        Self::Cifar10Binary,
        Self::Npz,
        Self::Npy,
        Self::ImageFolder,
        Self::Cifar10Python,
        Self::Cifar100Python,
        Self::Cifar100Binary,
    ];

    /// Short name used in records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Idx => "idx",
            DataFormat::Cifar10Binary => "cifar10-binary",
            DataFormat::Npz => "npz",
            DataFormat::Npy => "npy",
            DataFormat::ImageFolder => "image-folder",
            DataFormat::Cifar10Python => "cifar10-python",
            DataFormat::Cifar100Python => "cifar100-python",
            DataFormat::Cifar100Binary => "cifar100-binary",
        }
    }
}

/// The file format a model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// safetensors (Gauntlet's own files carry their architecture in metadata).
    Safetensors,
    /// A PyTorch state dict (`.pt`/`.pth`), read without executing pickle code.
    Pytorch,
    /// An ONNX graph.
    Onnx,
}

impl ModelFormat {
    /// Every format.
    pub const ALL: [Self; 3] = [Self::Safetensors, Self::Pytorch, Self::Onnx];

    /// Short name for records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Pytorch => "pytorch",
            ModelFormat::Onnx => "onnx",
        }
    }
}

/// How bad a scan finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; loading is safe.
    Low,
    /// Not on the allow-list of tensor-rebuild functions: loading it in Python
    /// would import code the scanner cannot vouch for. (Given to such imports
    /// only; loaders refuse the file.)
    Medium,
    /// The file is malformed or hides its imports; do not trust it.
    High,
    /// Loading it in Python would run arbitrary code (os, subprocess, eval, ...).
    Critical,
}

impl Severity {
    /// Every severity, least first.
    pub const ALL: [Self; 4] = [Self::Low, Self::Medium, Self::High, Self::Critical];

    /// The lowercase name used in JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// What a model file was scanned as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanFormat {
    /// safetensors.
    Safetensors,
    /// `torch.save`'s zip archive.
    PytorchZip,
    /// `torch.save`'s oldest, tar format.
    PytorchTar,
    /// `torch.save`'s legacy stream of pickles.
    PytorchLegacy,
    /// One plain pickle.
    Pickle,
    /// A NumPy `.npy` array.
    Npy,
    /// An ONNX graph.
    Onnx,
}

impl ScanFormat {
    /// Every format the scanner recognises.
    pub const ALL: [Self; 7] = [
        Self::Safetensors,
        Self::PytorchZip,
        Self::PytorchTar,
        Self::PytorchLegacy,
        Self::Pickle,
        Self::Npy,
        Self::Onnx,
    ];

    /// The name in scan reports and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::PytorchZip => "pytorch-zip",
            Self::PytorchTar => "pytorch-tar",
            Self::PytorchLegacy => "pytorch-legacy",
            Self::Pickle => "pickle",
            Self::Npy => "npy",
            Self::Onnx => "onnx",
        }
    }
}

macro_rules! display_by {
    ($name:ident, $($ty:ty),*) => {
        $(impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.$name())
            }
        })*
    };
}
display_by!(as_str, Split, DataFormat, ModelFormat, Severity, ScanFormat);

#[cfg(test)]
mod tests {
    use super::*;

    /// Each table's `name` is its serde name, so records keep their schema.
    fn names_are_serde_names<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(
        all: &[T],
        name: impl Fn(&T) -> &'static str,
    ) {
        for value in all {
            let json = serde_json::to_string(value).unwrap();
            assert_eq!(json, format!("\"{}\"", name(value)));
            assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), value);
        }
    }

    #[test]
    fn every_name_is_the_serialised_name() {
        names_are_serde_names(&Norm::ALL, |n| n.name());
        names_are_serde_names(&AttackKind::ALL, |k| k.name());
        names_are_serde_names(&WarningCode::ALL, |c| c.name());
        names_are_serde_names(&Split::ALL, |s| s.as_str());
        names_are_serde_names(&DataFormat::ALL, |f| f.as_str());
        names_are_serde_names(&ModelFormat::ALL, |f| f.as_str());
        names_are_serde_names(&Severity::ALL, |s| s.as_str());
        names_are_serde_names(&ScanFormat::ALL, |f| f.as_str());
    }

    #[test]
    fn the_schema_documents_every_warning_code_and_norm() {
        let schema = include_str!("../../../docs/record-schema.md");
        for code in WarningCode::ALL {
            assert!(schema.contains(&format!("`{code}`")), "{code} undocumented");
        }
        for norm in Norm::ALL {
            assert!(schema.contains(&format!("`{norm}`")), "{norm} undocumented");
        }
    }

    #[test]
    fn an_unknown_name_is_refused() {
        assert!(serde_json::from_str::<Norm>("\"l0\"").is_err());
        assert!(serde_json::from_str::<WarningCode>("\"made-up\"").is_err());
    }
}
