//! The grouped mixture-of-experts ops against independent references: candle's own f32
//! matmul of each expert's rows for [`moe_grouped_matmul`], and an f64 host loop over the
//! pairs for [`moe_combine`]. The routing is random (seeded): each token picks `k` distinct
//! experts, so some experts get no rows and others several row tiles.

use super::{CheckRow, random_pair, rel_err, seeded};
use crate::moe::{ExpertRows, moe_combine, moe_grouped_matmul};
use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;

/// One MoE projection: `tokens` tokens each routed to `k` of `experts` experts whose weights
/// are `[out, hidden]`.
#[derive(Clone, Copy, Debug)]
pub struct MoeCase {
    pub tokens: usize,
    pub experts: usize,
    pub k: usize,
    pub hidden: usize,
    pub out: usize,
}

/// A decode step of one token, sparse batches over many experts, and a prefill-sized batch
/// whose experts own several row tiles; widths that are not multiples of the kernel's tiles.
pub fn moe_cases() -> Vec<MoeCase> {
    [
        (1, 8, 2, 64, 96),
        (5, 16, 4, 300, 70),
        (8, 128, 8, 256, 64),
        (33, 4, 2, 520, 33),
    ]
    .into_iter()
    .map(|(tokens, experts, k, hidden, out)| MoeCase {
        tokens,
        experts,
        k,
        hidden,
        out,
    })
    .collect()
}

/// Random routing: `(token of each pair sorted by expert, rows per expert, slot rows [T·k])`
/// where slot `t·k + j` is the row of token `t`'s `j`-th pair.
fn random_routing(rng: &mut impl Rng, case: &MoeCase) -> (Vec<u32>, Vec<usize>, Vec<u32>) {
    let mut per_expert: Vec<Vec<(usize, usize)>> = vec![Vec::new(); case.experts];
    let mut experts: Vec<usize> = (0..case.experts).collect();
    for token in 0..case.tokens {
        experts.shuffle(rng);
        for (slot, &e) in experts[..case.k].iter().enumerate() {
            per_expert[e].push((token, slot));
        }
    }
    let mut pair_tokens = Vec::new();
    let mut slot_rows = vec![0u32; case.tokens * case.k];
    for pairs in &per_expert {
        for &(token, slot) in pairs {
            slot_rows[token * case.k + slot] = pair_tokens.len() as u32;
            pair_tokens.push(token as u32);
        }
    }
    let rows = per_expert.iter().map(Vec::len).collect();
    (pair_tokens, rows, slot_rows)
}

/// Two rows: the grouped matmul and the combine of its (dtype-rounded) output.
pub fn check_moe(
    device: &Device,
    dtype: DType,
    case: &MoeCase,
    seed: u64,
) -> Result<Vec<CheckRow>> {
    let mut rng = seeded(seed);
    let (pair_tokens, rows_per_expert, slot_rows) = random_routing(&mut rng, case);
    let pairs = pair_tokens.len();
    let (x32, x) = random_pair(&mut rng, &[case.tokens, case.hidden], dtype, 1.0)?;
    let (w32, w) = random_pair(&mut rng, &[case.experts, case.out, case.hidden], dtype, 0.1)?;
    let token_index = Tensor::from_slice(&pair_tokens, pairs, &Device::Cpu)?;
    let (x32, x) = (
        x32.index_select(&token_index, 0)?,
        x.index_select(&token_index, 0)?,
    );
    let rows = ExpertRows::new(&rows_per_expert, device)?;
    let y = moe_grouped_matmul(&x.to_device(device)?, &w.to_device(device)?, &rows)?;
    let mut reference = Vec::new();
    let mut start = 0;
    for (e, &n) in rows_per_expert.iter().enumerate() {
        if n > 0 {
            reference.push(x32.narrow(0, start, n)?.matmul(&w32.get(e)?.t()?)?);
        }
        start += n;
    }
    let reference = Tensor::cat(&reference, 0)?;
    let shape = format!(
        "T={} E={} k={} [{}x{}]",
        case.tokens, case.experts, case.k, case.out, case.hidden
    );
    let mut out = vec![CheckRow::new(
        "moe_grouped_matmul",
        dtype,
        shape.clone(),
        rel_err(&y, &reference)?,
    )];

    let weights: Vec<f32> = (0..case.tokens * case.k)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let slot_rows_t = Tensor::from_slice(&slot_rows, (case.tokens, case.k), device)?;
    let weights_t = Tensor::from_slice(&weights, (case.tokens, case.k), device)?;
    let combined = moe_combine(&y, &slot_rows_t, &weights_t)?;
    let y_host = y
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    let mut want = vec![0f32; case.tokens * case.out];
    for t in 0..case.tokens {
        for j in 0..case.k {
            let (row, weight) = (slot_rows[t * case.k + j] as usize, weights[t * case.k + j]);
            for (c, v) in y_host[row].iter().enumerate() {
                let acc = want[t * case.out + c] as f64 + weight as f64 * *v as f64;
                want[t * case.out + c] = acc as f32;
            }
        }
    }
    let want = Tensor::from_vec(want, (case.tokens, case.out), &Device::Cpu)?;
    out.push(CheckRow::new(
        "moe_combine",
        dtype,
        shape,
        rel_err(&combined, &want)?,
    ));
    Ok(out)
}
