//! k-nearest-neighbour votes in input space, streamed over the training data.

use gauntlet_data::Dataset;

use crate::error::Result;

/// Training images compared per GEMM: bounds memory to `queries × CHUNK` distances
/// plus one chunk of images, whatever the dataset's size.
const CHUNK: usize = 1024;

/// For every query sample, the labels of its `k` nearest training samples by
/// Euclidean distance in input space, skipping the query itself and every sample
/// with `excluded[i]`. Nearest first; ties go to the lower index.
pub(crate) fn neighbour_labels(
    data: &Dataset,
    queries: &[usize],
    excluded: &[bool],
    k: usize,
) -> Result<Vec<Vec<u32>>> {
    let per: usize = data.image_shape().iter().product();
    let mut query_images = Vec::with_capacity(queries.len() * per);
    for &q in queries {
        query_images.extend(data.images_f32(q..q + 1)?);
    }
    let query_norms: Vec<f32> = query_images.chunks_exact(per).map(squared_norm).collect();
    // Per query: (distance, index) of the best k so far, sorted ascending.
    let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(k + 1); queries.len()];
    let mut start = 0;
    while start < data.len() {
        let end = (start + CHUNK).min(data.len());
        let chunk = data.images_f32(start..end)?;
        let chunk_norms: Vec<f32> = chunk.chunks_exact(per).map(squared_norm).collect();
        let dots = gauntlet_models::matmul_transposed(&query_images, &chunk, per)?;
        for (qi, row) in dots.chunks_exact(end - start).enumerate() {
            let list = &mut best[qi];
            for (offset, &dot) in row.iter().enumerate() {
                let index = start + offset;
                if index == queries[qi] || excluded[index] {
                    continue;
                }
                let distance = query_norms[qi] + chunk_norms[offset] - 2.0 * dot;
                if list.len() == k && distance >= list[k - 1].0 {
                    continue;
                }
                let at = list.partition_point(|&(d, _)| d <= distance);
                list.insert(at, (distance, index));
                list.truncate(k);
            }
        }
        start = end;
    }
    Ok(best
        .into_iter()
        .map(|list| list.into_iter().map(|(_, i)| data.labels()[i]).collect())
        .collect())
}

/// The most common label among `labels` (ties: the one seen first, i.e. nearer).
pub(crate) fn majority(labels: &[u32]) -> Option<u32> {
    let mut best: Option<(u32, usize)> = None;
    for &label in labels {
        let count = labels.iter().filter(|&&l| l == label).count();
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((label, count));
        }
    }
    best.map(|(label, _)| label)
}

fn squared_norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum()
}
