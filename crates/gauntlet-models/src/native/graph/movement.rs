//! Data movement (reshape, flatten, transpose, slice, split, gather with constant
//! indices, padding, concat, nearest resize, …) as precomputed copy runs.
//!
//! The planner traces which input element each output element reads by running
//! the reference executor once on tensors of element indices; here the result is
//! compressed into contiguous runs, so a flatten is one copy per image and a
//! channel concat one copy per pixel and input.

use rayon::prelude::*;

/// Marks an output element that reads no input (padding): it is zero.
pub(crate) const ZERO: u32 = u32::MAX;

/// `len` consecutive output elements from `input` starting at `src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    dst: u32,
    src: u32,
    input: u32,
    len: u32,
}

/// Copies of per-sample elements from one or more inputs into one output.
#[derive(Clone, Debug)]
pub(crate) struct Movement {
    runs: Vec<Run>,
    input_lens: Vec<usize>,
    pub out_len: usize,
}

impl Movement {
    /// From each output element's source `(input, element)`; `input == ZERO`
    /// reads zero.
    pub(crate) fn new(sources: &[(u32, u32)], input_lens: Vec<usize>) -> Self {
        let mut runs: Vec<Run> = Vec::new();
        for (dst, &(input, src)) in sources.iter().enumerate() {
            if let Some(last) = runs.last_mut() {
                let continues = last.input == input
                    && (input == ZERO || last.src + last.len == src)
                    && last.dst + last.len == dst as u32;
                if continues {
                    last.len += 1;
                    continue;
                }
            }
            runs.push(Run {
                dst: dst as u32,
                src,
                input,
                len: 1,
            });
        }
        Self {
            runs,
            input_lens,
            out_len: sources.len(),
        }
    }

    /// Whether the output is exactly the single input (a reshape that moves nothing).
    pub(crate) fn is_identity(&self) -> bool {
        self.input_lens.len() == 1
            && self.input_lens[0] == self.out_len
            && match self.runs.as_slice() {
                [] => self.out_len == 0,
                [run] => run.input == 0 && run.src == 0 && run.len as usize == self.out_len,
                _ => false,
            }
    }

    /// For a movement that reorders its single input without dropping,
    /// repeating or zero-filling anything (a flatten of NHWC images into the
    /// graph's NCHW order), the input element each output element reads.
    pub(crate) fn permutation(&self) -> Option<Vec<u32>> {
        if self.input_lens != [self.out_len] {
            return None;
        }
        let mut source = vec![u32::MAX; self.out_len];
        let mut seen = vec![false; self.out_len];
        for run in &self.runs {
            if run.input != 0 {
                return None;
            }
            for i in 0..run.len {
                let src = (run.src + i) as usize;
                if std::mem::replace(seen.get_mut(src)?, true) {
                    return None;
                }
                source[(run.dst + i) as usize] = run.src + i;
            }
        }
        seen.iter().all(|&s| s).then_some(source)
    }

    pub(crate) fn forward(&self, inputs: &[&[f32]], y: &mut [f32]) {
        y.par_chunks_mut(self.out_len.max(1))
            .enumerate()
            .for_each(|(s, y)| {
                for run in &self.runs {
                    let dst = &mut y[run.dst as usize..(run.dst + run.len) as usize];
                    if run.input == ZERO {
                        dst.fill(0.0);
                        continue;
                    }
                    let len = self.input_lens[run.input as usize];
                    let src = &inputs[run.input as usize][s * len..(s + 1) * len];
                    dst.copy_from_slice(&src[run.src as usize..(run.src + run.len) as usize]);
                }
            });
    }

    /// Adds the gradient of every input (each `n × input_len`) for `dy`.
    pub(crate) fn backward(&self, dy: &[f32], grads: &mut [&mut [f32]]) {
        for (input, grad) in grads.iter_mut().enumerate() {
            let len = self.input_lens[input];
            grad.par_chunks_mut(len.max(1))
                .enumerate()
                .for_each(|(s, grad)| {
                    let dy = &dy[s * self.out_len..(s + 1) * self.out_len];
                    for run in self.runs.iter().filter(|r| r.input == input as u32) {
                        let src = &dy[run.dst as usize..(run.dst + run.len) as usize];
                        let dst = &mut grad[run.src as usize..(run.src + run.len) as usize];
                        dst.iter_mut().zip(src).for_each(|(d, g)| *d += g);
                    }
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_contiguous_copies_and_backward_is_the_adjoint() {
        // Output of 6: input 1 elements 2..5, then a zero, then input 0 elements 1, 0.
        let sources = [(1, 2), (1, 3), (1, 4), (ZERO, 0), (0, 1), (0, 0)];
        let m = Movement::new(&sources, vec![2, 5]);
        assert_eq!(m.runs.len(), 4);
        let (a, b) = (
            [1.0, 2.0, 3.0, 4.0],
            [10.0, 11.0, 12.0, 13.0, 14.0, 20.0, 21.0, 22.0, 23.0, 24.0],
        );
        let mut y = vec![f32::NAN; 12];
        m.forward(&[&a, &b], &mut y);
        assert_eq!(
            y,
            [12.0, 13.0, 14.0, 0.0, 2.0, 1.0, 22.0, 23.0, 24.0, 0.0, 4.0, 3.0]
        );
        let dy: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let (mut ga, mut gb) = (vec![0.0; 4], vec![0.0; 10]);
        m.backward(&dy, &mut [&mut ga, &mut gb]);
        assert_eq!(ga, [5.0, 4.0, 11.0, 10.0]);
        assert_eq!(gb, [0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 6.0, 7.0, 8.0]);
        assert!(!m.is_identity());
        assert!(Movement::new(&[(0, 0), (0, 1)], vec![2]).is_identity());
    }
}
