//! The quantized CPU matmul against its scalar reference and against candle's
//! dequantize-then-matmul, for every format, every ISA this CPU has, and shapes that hit the
//! kernels' edges: odd block counts, a 16-block chunk plus a remainder, token counts that are
//! not a multiple of the 4-token tile, and more threads than row blocks.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use metrum_kernels::quant::{Isa, QuantMatrix, QuantType};
use metrum_kernels::threads::ThreadPool;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Standard normal values (Box-Muller) from a seed.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

fn ggml(ty: QuantType) -> GgmlDType {
    match ty {
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q5K => GgmlDType::Q5K,
        QuantType::Q6K => GgmlDType::Q6K,
    }
}

/// A random `[rows, cols]` matrix quantized by candle: its ggml bytes and candle's dequantized f32.
fn random_ggml(ty: QuantType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let dev = Device::Cpu;
    let w = Tensor::from_vec(normal(rows * cols, seed), (rows, cols), &dev).unwrap();
    let q = QTensor::quantize(&w, ggml(ty)).unwrap();
    let bytes = q.data().unwrap().to_vec();
    let dense = q.dequantize(&dev).unwrap();
    (bytes, dense.flatten_all().unwrap().to_vec1().unwrap())
}

/// The same matrix laid out for `isa`.
fn matrix(isa: Isa, ty: QuantType, rows: usize, cols: usize, bytes: &[u8]) -> QuantMatrix {
    QuantMatrix::from_ggml_for(isa, ty, rows, cols, bytes).unwrap()
}

/// A random matrix for this CPU's best ISA, and candle's dequantized f32 of it.
fn random_matrix(ty: QuantType, rows: usize, cols: usize, seed: u64) -> (QuantMatrix, Vec<f32>) {
    let (bytes, dense) = random_ggml(ty, rows, cols, seed);
    (matrix(Isa::detect(), ty, rows, cols, &bytes), dense)
}

fn random_input(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
    normal(tokens * cols, seed)
}

fn dense_matmul(w: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> Vec<f32> {
    let mut out = vec![0f32; tokens * rows];
    for t in 0..tokens {
        for r in 0..rows {
            let mut acc = 0f64;
            for k in 0..cols {
                acc += x[t * cols + k] as f64 * w[r * cols + k] as f64;
            }
            out[t * rows + r] = acc as f32;
        }
    }
    out
}

fn run(m: &QuantMatrix, threads: usize, x: &[f32], tokens: usize) -> Vec<f32> {
    let pool = ThreadPool::new(threads);
    let mut out = vec![f32::NAN; tokens * m.rows()];
    m.matmul_on(&pool, x, tokens, &mut out).unwrap();
    out
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

fn shapes(ty: QuantType) -> Vec<(usize, usize)> {
    if ty.block_values() == 256 {
        // 1, 2, 3 and 6 super-blocks (odd counts); rows around the 16-row interleave.
        vec![
            (1, 256),
            (7, 512),
            (33, 768),
            (16, 1536),
            (17, 256),
            (15, 768),
        ]
    } else {
        // 1, 3, 17 (16 + 1), 18 (the default model's hidden size) and 48 blocks; row counts
        // around the interleaved layout's groups of 16.
        vec![(1, 32), (5, 96), (17, 544), (33, 576), (16, 1536), (40, 64)]
    }
}

/// The engine's batch invariance rests on this: a token's output row is bit for bit the same
/// whether it is multiplied alone (a decode) or inside a batch of any size at any position
/// (a prefill chunk, a verification chunk, a batch of decodes), on every ISA and format.
#[test]
fn a_token_s_result_does_not_depend_on_its_batch() {
    for ty in QuantType::ALL {
        let (rows, cols) = shapes(ty)[0];
        let (bytes, _) = random_ggml(ty, rows, cols, 7);
        for isa in Isa::supported() {
            let m = matrix(isa, ty, rows, cols, &bytes);
            let tokens = 19;
            let x = random_input(tokens, cols, 300);
            let batch = run(&m, 2, &x, tokens);
            for t in 0..tokens {
                let alone = run(&m, 2, &x[t * cols..(t + 1) * cols], 1);
                let in_batch = &batch[t * rows..(t + 1) * rows];
                assert!(
                    alone
                        .iter()
                        .zip(in_batch)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} {}: token {t} of {tokens} differs from the same token alone",
                    ty.name(),
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn every_isa_matches_the_scalar_reference() {
    for ty in QuantType::ALL {
        for (i, &(rows, cols)) in shapes(ty).iter().enumerate() {
            let (bytes, _) = random_ggml(ty, rows, cols, i as u64);
            let scalar = matrix(Isa::Scalar, ty, rows, cols, &bytes);
            let token_counts: &[usize] = if ty.block_values() == 256 {
                &[1, 2, 3, 5, 9, 15, 16, 33]
            } else {
                &[1, 2, 3, 5, 9]
            };
            for &tokens in token_counts {
                let x = random_input(tokens, cols, 100 + i as u64);
                let reference = run(&scalar, 1, &x, tokens);
                let scale = reference.iter().fold(1f32, |a, v| a.max(v.abs()));
                for isa in Isa::supported() {
                    let got = run(&matrix(isa, ty, rows, cols, &bytes), 2, &x, tokens);
                    for (g, r) in got.iter().zip(&reference) {
                        assert!(
                            (g - r).abs() <= 1e-5 * scale,
                            "{} {rows}x{cols} tokens {tokens} {}: {g} vs scalar {r}",
                            ty.name(),
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matches_candle_dequantize_then_matmul() {
    for ty in QuantType::ALL {
        for (i, &(rows, cols)) in shapes(ty).iter().enumerate() {
            let (m, dense) = random_matrix(ty, rows, cols, 7 + i as u64);
            let tokens = 6;
            let x = random_input(tokens, cols, 200 + i as u64);
            let expected = dense_matmul(&dense, &x, rows, cols, tokens);
            let _ = &m;
            for isa in Isa::supported() {
                let (bytes, _) = random_ggml(ty, rows, cols, 7 + i as u64);
                let m = matrix(isa, ty, rows, cols, &bytes);
                let got = run(&m, 2, &x, tokens);
                let diff: Vec<f32> = got.iter().zip(&expected).map(|(a, b)| a - b).collect();
                let rel = norm(&diff) / norm(&expected);
                // Only the activations' 8-bit quantization separates the two.
                assert!(
                    rel < 0.01,
                    "{} {rows}x{cols} {}: relative error {rel}",
                    ty.name(),
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn dequantized_rows_equal_candles() {
    for ty in QuantType::ALL {
        let (rows, cols) = shapes(ty)[2];
        let (m, dense) = random_matrix(ty, rows, cols, 3);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row).unwrap();
            assert_eq!(
                row,
                dense[r * cols..(r + 1) * cols],
                "{} row {r}",
                ty.name()
            );
        }
    }
}

#[test]
fn thread_count_does_not_change_the_result() {
    for (ty, cols) in [
        (QuantType::Q4_1, 576),
        (QuantType::Q4K, 768),
        (QuantType::Q5K, 768),
        (QuantType::Q6K, 768),
    ] {
        let (m, _) = random_matrix(ty, 40, cols, 5);
        let x = random_input(7, cols, 6);
        let one = run(&m, 1, &x, 7);
        for threads in [2, 3, 8] {
            assert_eq!(
                run(&m, threads, &x, 7),
                one,
                "{} {threads} threads",
                ty.name()
            );
        }
    }
}

#[test]
fn dequantized_rows_equal_candles_on_every_isa() {
    for ty in [QuantType::Q4K, QuantType::Q5K, QuantType::Q6K] {
        let (rows, cols) = (17, 512);
        let (bytes, dense) = random_ggml(ty, rows, cols, 9);
        for isa in Isa::supported() {
            let m = matrix(isa, ty, rows, cols, &bytes);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut row).unwrap();
                assert_eq!(
                    row,
                    dense[r * cols..(r + 1) * cols],
                    "{} {}",
                    ty.name(),
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let (m, _) = random_matrix(QuantType::Q8_0, 4, 64, 1);
    let pool = ThreadPool::new(1);
    let mut out = vec![0f32; 4];
    assert!(m.matmul_on(&pool, &[0.0; 63], 1, &mut out).is_err());
    assert!(m.matmul_on(&pool, &[0.0; 64], 1, &mut out[..3]).is_err());
    assert!(QuantMatrix::from_ggml(QuantType::Q4_1, 2, 48, &[0; 60]).is_err());
    assert!(QuantMatrix::from_ggml(QuantType::Q4_1, 2, 64, &[0; 79]).is_err());
    assert!(m.dequantize_row(4, &mut [0.0; 64]).is_err());
}
