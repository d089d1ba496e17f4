//! Optimisers over a flat parameter vector. Written here rather than taken from
//! candle-nn so that their state is ours to checkpoint and resume.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which optimiser to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba 2015), β = (0.9, 0.999), ε = 1e-8, no weight decay.
    Adam,
    /// Stochastic gradient descent with heavy-ball momentum (PyTorch's form).
    Sgd,
}

impl OptimizerKind {
    /// Every optimiser, in the order the command line lists them.
    pub const ALL: [Self; 2] = [Self::Adam, Self::Sgd];

    /// `adam` or `sgd`.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::Sgd => "sgd",
        }
    }

    /// Parse `adam` or `sgd`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "adam" => Ok(Self::Adam),
            "sgd" => Ok(Self::Sgd),
            other => Err(Error::Config(format!(
                "unknown optimizer '{other}', expected 'adam' or 'sgd'"
            ))),
        }
    }
}

/// Adam state: first and second moments per parameter.
#[derive(Clone, PartialEq)]
pub struct Adam {
    first: Vec<f32>,
    second: Vec<f32>,
    learning_rate: f64,
    step: i32,
}

/// SGD-with-momentum state: one velocity per parameter.
#[derive(Clone, PartialEq)]
pub struct Sgd {
    velocity: Vec<f32>,
    learning_rate: f64,
    momentum: f64,
}

/// An optimiser over one flat parameter vector. Both rules are elementwise, so
/// the vector's layout (the native engine's) does not matter. Checkpoints store
/// it as [`Optimizer::settings`] plus [`Optimizer::moments`].
#[derive(Clone, PartialEq)]
pub enum Optimizer {
    /// Adam.
    Adam(Adam),
    /// SGD with momentum.
    Sgd(Sgd),
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;
/// Values per parallel task of an update: large enough to amortise the task,
/// small enough to give both cores work on the smallest models.
const CHUNK: usize = 1 << 15;

impl Optimizer {
    /// A fresh optimiser (zero moments) for `count` parameters.
    pub fn new(kind: OptimizerKind, learning_rate: f64, momentum: f64, count: usize) -> Self {
        match kind {
            OptimizerKind::Adam => Optimizer::Adam(Adam {
                first: vec![0.0; count],
                second: vec![0.0; count],
                learning_rate,
                step: 0,
            }),
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd {
                velocity: vec![0.0; count],
                learning_rate,
                momentum,
            }),
        }
    }

    /// Changes the learning rate (for schedules).
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        match self {
            Optimizer::Adam(adam) => adam.learning_rate = learning_rate,
            Optimizer::Sgd(sgd) => sgd.learning_rate = learning_rate,
        }
    }

    /// One update of `params` from their gradient.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        let expected = match self {
            Optimizer::Adam(adam) => adam.first.len(),
            Optimizer::Sgd(sgd) => sgd.velocity.len(),
        };
        if params.len() != expected || grads.len() != expected {
            return Err(Error::Config(format!(
                "optimiser state has {expected} parameters, got {} parameters and {} gradients",
                params.len(),
                grads.len()
            )));
        }
        // Elementwise, in chunks over both cores: each value's update is the
        // same whatever the thread count, and one thread cannot stream the
        // millions of values (parameters, gradients, two moments) fast enough.
        match self {
            Optimizer::Adam(adam) => {
                adam.step += 1;
                let correction1 = 1.0 - BETA1.powi(adam.step);
                let correction2 = 1.0 - BETA2.powi(adam.step);
                // PyTorch's form: lr / c1 · m / (sqrt(v / c2) + ε).
                let step_size = (adam.learning_rate / correction1) as f32;
                let inv_sqrt_c2 = (1.0 / correction2.sqrt()) as f32;
                let (b1, b2, eps) = (BETA1 as f32, BETA2 as f32, EPSILON as f32);
                params
                    .par_chunks_mut(CHUNK)
                    .zip(grads.par_chunks(CHUNK))
                    .zip(adam.first.par_chunks_mut(CHUNK))
                    .zip(adam.second.par_chunks_mut(CHUNK))
                    .for_each(|(((params, grads), first), second)| {
                        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(first).zip(second)
                        {
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            *p -= step_size * *m / (v.sqrt() * inv_sqrt_c2 + eps);
                        }
                    });
            }
            Optimizer::Sgd(sgd) => {
                let (lr, momentum) = (sgd.learning_rate as f32, sgd.momentum as f32);
                params
                    .par_chunks_mut(CHUNK)
                    .zip(grads.par_chunks(CHUNK))
                    .zip(sgd.velocity.par_chunks_mut(CHUNK))
                    .for_each(|((params, grads), velocity)| {
                        for ((p, g), velocity) in params.iter_mut().zip(grads).zip(velocity) {
                            *velocity = momentum * *velocity + g;
                            *p -= lr * *velocity;
                        }
                    });
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Optimizer {
    /// The scalar state only: the moment vectors hold millions of values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Optimizer").field(&self.settings()).finish()
    }
}

/// An optimiser's scalar state (its vectors are stored separately).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSettings {
    /// Which rule.
    pub kind: OptimizerKind,
    /// Current learning rate.
    pub learning_rate: f64,
    /// SGD momentum (0 for Adam).
    pub momentum: f64,
    /// Adam's step count (0 for SGD).
    pub step: i32,
}

impl OptimizerSettings {
    /// Names of the state vectors, in [`Optimizer::moments`] order.
    pub fn moment_names(&self) -> &'static [&'static str] {
        match self.kind {
            OptimizerKind::Adam => &["first", "second"],
            OptimizerKind::Sgd => &["velocity"],
        }
    }
}

impl Optimizer {
    /// The scalar state.
    pub fn settings(&self) -> OptimizerSettings {
        match self {
            Optimizer::Adam(adam) => OptimizerSettings {
                kind: OptimizerKind::Adam,
                learning_rate: adam.learning_rate,
                momentum: 0.0,
                step: adam.step,
            },
            Optimizer::Sgd(sgd) => OptimizerSettings {
                kind: OptimizerKind::Sgd,
                learning_rate: sgd.learning_rate,
                momentum: sgd.momentum,
                step: 0,
            },
        }
    }

    /// The state vectors by name.
    pub fn moments(&self) -> Vec<(&'static str, &[f32])> {
        match self {
            Optimizer::Adam(adam) => vec![("first", &adam.first), ("second", &adam.second)],
            Optimizer::Sgd(sgd) => vec![("velocity", &sgd.velocity)],
        }
    }

    /// Rebuilds an optimiser from [`Optimizer::settings`] and [`Optimizer::moments`].
    pub fn from_parts(settings: OptimizerSettings, mut moments: Vec<Vec<f32>>) -> Result<Self> {
        let expected = settings.moment_names().len();
        if moments.len() != expected || moments.windows(2).any(|w| w[0].len() != w[1].len()) {
            return Err(Error::Config(format!(
                "optimiser state needs {expected} vectors of one length"
            )));
        }
        Ok(match settings.kind {
            OptimizerKind::Adam => {
                let second = moments.pop().unwrap_or_default();
                let first = moments.pop().unwrap_or_default();
                Optimizer::Adam(Adam {
                    first,
                    second,
                    learning_rate: settings.learning_rate,
                    step: settings.step,
                })
            }
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd {
                velocity: moments.pop().unwrap_or_default(),
                learning_rate: settings.learning_rate,
                momentum: settings.momentum,
            }),
        })
    }
}
