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
    /// For a single input gathered in short runs (a transpose): each output
    /// element's source, copied element by element without run bookkeeping.
    gather: Option<Vec<u32>>,
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
        // Runs shorter than 4 elements on average cost more to walk than a
        // plain index per element.
        let short = runs.len() * 4 > sources.len();
        let gather = (short && input_lens.len() == 1 && runs.iter().all(|r| r.input == 0))
            .then(|| sources.iter().map(|&(_, src)| src).collect());
        Self {
            runs,
            gather,
            input_lens,
            out_len: sources.len(),
        }
    }

    /// Each output element's source `(input, element)` (`input == ZERO`: zero).
    fn sources(&self) -> Vec<(u32, u32)> {
        let mut sources = vec![(ZERO, 0); self.out_len];
        for run in &self.runs {
            for i in 0..run.len {
                sources[(run.dst + i) as usize] = (run.input, run.src + i);
            }
        }
        sources
    }

    /// Reads input `through` of `self` from what `inner` gathers instead: one
    /// movement doing both (so a chain of reshapes and transposes copies once).
    /// The inputs are `self`'s others, in order, then `inner`'s.
    pub(crate) fn compose(&self, through: usize, inner: &Movement) -> Movement {
        let inner_sources = inner.sources();
        let kept = |i: u32| i - u32::from(i as usize > through);
        let first_inner = (self.input_lens.len() - 1) as u32;
        let sources: Vec<(u32, u32)> = self
            .sources()
            .into_iter()
            .map(|(input, src)| match input {
                ZERO => (ZERO, 0),
                i if i as usize == through => match inner_sources[src as usize] {
                    (ZERO, _) => (ZERO, 0),
                    (j, src) => (first_inner + j, src),
                },
                i => (kept(i), src),
            })
            .collect();
        let mut input_lens: Vec<usize> = self
            .input_lens
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != through)
            .map(|(_, &len)| len)
            .collect();
        input_lens.extend(&inner.input_lens);
        Movement::new(&sources, input_lens)
    }

    /// Whether some output element reads no input (is zero-filled).
    pub(crate) fn fills_zeros(&self) -> bool {
        self.runs.iter().any(|r| r.input == ZERO)
            || self.runs.iter().map(|r| r.len as usize).sum::<usize>() != self.out_len
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
        if let (Some(gather), [x]) = (&self.gather, inputs) {
            let len = self.input_lens[0];
            y.par_chunks_mut(self.out_len.max(1))
                .zip(x.par_chunks(len.max(1)))
                .for_each(|(y, x)| {
                    for (y, &src) in y.iter_mut().zip(gather) {
                        *y = x[src as usize];
                    }
                });
            return;
        }
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
        if let (Some(gather), [grad]) = (&self.gather, &mut *grads) {
            let len = self.input_lens[0];
            grad.par_chunks_mut(len.max(1))
                .zip(dy.par_chunks(self.out_len.max(1)))
                .for_each(|(grad, dy)| {
                    for (g, &src) in dy.iter().zip(gather) {
                        grad[src as usize] += g;
                    }
                });
            return;
        }
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

    #[test]
    fn a_transpose_is_gathered_per_element_and_its_backward_is_the_adjoint() {
        // 3×4 → 4×3 transpose of each of two samples: runs of one element.
        let sources: Vec<(u32, u32)> = (0..12).map(|i| (0, (i % 3) * 4 + i / 3)).collect();
        let m = Movement::new(&sources, vec![12]);
        assert!(m.gather.is_some());
        let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let mut y = vec![f32::NAN; 24];
        m.forward(&[&x], &mut y);
        for s in 0..2 {
            for (i, &(_, src)) in sources.iter().enumerate() {
                assert_eq!(y[s * 12 + i], x[s * 12 + src as usize]);
            }
        }
        // ⟨move(x), dy⟩ = ⟨x, moveᵀ(dy)⟩.
        let dy: Vec<f32> = (0..24).map(|i| (i * 7 % 11) as f32).collect();
        let mut dx = vec![1.0; 24];
        m.backward(&dy, &mut [&mut dx]);
        let lhs: f32 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * (b - 1.0)).sum();
        assert_eq!(lhs, rhs);
    }

    #[test]
    fn a_composed_movement_equals_the_two_in_sequence() {
        // inner: concat of a (len 2) and b (len 3) reversed, with a zero: len 6.
        let inner = Movement::new(
            &[(1, 2), (1, 1), (1, 0), (ZERO, 0), (0, 1), (0, 0)],
            vec![2, 3],
        );
        // outer: reads c (len 2) and the inner's output (input 1), with a zero.
        let outer = Movement::new(
            &[(1, 5), (0, 1), (1, 3), (ZERO, 0), (1, 0), (1, 0), (0, 0)],
            vec![2, 6],
        );
        let composed = outer.compose(1, &inner);
        let (a, b, c) = ([1.0, 2.0], [10.0, 11.0, 12.0], [100.0, 200.0]);
        let mut mid = vec![f32::NAN; 6];
        inner.forward(&[&a, &b], &mut mid);
        let (mut expected, mut got) = (vec![f32::NAN; 7], vec![f32::NAN; 7]);
        outer.forward(&[&c, &mid], &mut expected);
        composed.forward(&[&c, &a, &b], &mut got);
        assert_eq!(got, expected);
        assert_eq!(got, [1.0, 200.0, 0.0, 0.0, 12.0, 12.0, 100.0]);
        // The adjoint too: gradients reach a, b and c as through the chain.
        let dy: Vec<f32> = (1..=7).map(|i| i as f32).collect();
        let (mut gc, mut gmid) = (vec![0.0; 2], vec![0.0; 6]);
        outer.backward(&dy, &mut [&mut gc, &mut gmid]);
        let (mut ga, mut gb) = (vec![0.0; 2], vec![0.0; 3]);
        inner.backward(&gmid, &mut [&mut ga, &mut gb]);
        let (mut gc2, mut ga2, mut gb2) = (vec![0.0; 2], vec![0.0; 2], vec![0.0; 3]);
        composed.backward(&dy, &mut [&mut gc2, &mut ga2, &mut gb2]);
        assert_eq!((gc2, ga2, gb2), (gc, ga, gb));
    }
}
