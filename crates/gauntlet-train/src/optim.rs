//! Optimisers over candle variables. Written here rather than taken from
//! candle-nn so that their state is ours to checkpoint and resume.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
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

/// Adam state.
pub struct Adam {
    vars: Vec<Var>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    learning_rate: f64,
    step: i32,
}

/// SGD-with-momentum state.
pub struct Sgd {
    vars: Vec<Var>,
    velocity: Vec<Tensor>,
    learning_rate: f64,
    momentum: f64,
}

/// An optimiser over named variables.
pub enum Optimizer {
    /// Adam.
    Adam(Adam),
    /// SGD with momentum.
    Sgd(Sgd),
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

impl Optimizer {
    /// A fresh optimiser (zero moments) over `vars`.
    pub fn new(
        kind: OptimizerKind,
        learning_rate: f64,
        momentum: f64,
        vars: Vec<(String, Var)>,
    ) -> Result<Self> {
        let vars: Vec<Var> = vars.into_iter().map(|(_, v)| v).collect();
        let zeros = |vars: &[Var]| -> Result<Vec<Tensor>> {
            Ok(vars
                .iter()
                .map(|v| v.as_tensor().zeros_like())
                .collect::<candle_core::Result<_>>()?)
        };
        Ok(match kind {
            OptimizerKind::Adam => Optimizer::Adam(Adam {
                first: zeros(&vars)?,
                second: zeros(&vars)?,
                vars,
                learning_rate,
                step: 0,
            }),
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd {
                velocity: zeros(&vars)?,
                vars,
                learning_rate,
                momentum,
            }),
        })
    }

    /// One update from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        match self {
            Optimizer::Adam(adam) => {
                adam.step += 1;
                let correction1 = 1.0 - BETA1.powi(adam.step);
                let correction2 = 1.0 - BETA2.powi(adam.step);
                for ((var, m), v) in adam.vars.iter().zip(&mut adam.first).zip(&mut adam.second) {
                    let Some(g) = grads.get(var.as_tensor()) else {
                        continue;
                    };
                    *m = ((&*m * BETA1)? + (g * (1.0 - BETA1))?)?;
                    *v = ((&*v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                    let m_hat = (&*m / correction1)?;
                    let v_hat = (&*v / correction2)?;
                    let update = (m_hat / (v_hat.sqrt()? + EPSILON)?)?;
                    var.set(&(var.as_tensor() - (update * adam.learning_rate)?)?)?;
                }
            }
            Optimizer::Sgd(sgd) => {
                for (var, velocity) in sgd.vars.iter().zip(&mut sgd.velocity) {
                    let Some(g) = grads.get(var.as_tensor()) else {
                        continue;
                    };
                    *velocity = ((&*velocity * sgd.momentum)? + g)?;
                    var.set(&(var.as_tensor() - (&*velocity * sgd.learning_rate)?)?)?;
                }
            }
        }
        Ok(())
    }
}
