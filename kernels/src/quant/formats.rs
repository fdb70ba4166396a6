//! The GGUF (ggml) block formats Metrum multiplies without dequantizing, and their conversion
//! into the layouts the kernels read.
//!
//! ggml stores a row as an array of blocks, each block its scale(s) followed by its packed
//! values. For the 32-value formats the kernels want the opposite, structure-of-arrays: all the
//! row's f16 scales together (16 of them widen to f32 in one instruction) and all packed values
//! together (two blocks fill one 512-bit register). The conversion moves bytes only, so the
//! memory a matrix takes, and the bytes a decode step reads, stay those of the GGUF file. The
//! k-quant super-blocks (256 values) are kept exactly as ggml stores them.

use half::f16;

/// A quantized weight format, by its ggml name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    pub const ALL: [QuantType; 6] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => 32,
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => 256,
        }
    }

    /// Bytes per block in ggml's layout.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q8_0 => 34,
            QuantType::Q4K => 144,
            QuantType::Q5K => 176,
            QuantType::Q6K => 210,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4K => "Q4_K",
            QuantType::Q5K => "Q5_K",
            QuantType::Q6K => "Q6_K",
        }
    }
}

/// A matrix's values in the layout its kernel reads (see the module docs). Rows are `cols`
/// values; `nb = cols / 32` blocks per row for the 32-value formats.
#[derive(Debug, Clone)]
pub(crate) enum Packed {
    /// Q4_0 (`mins` is `None`: value = d·(q − 8)) and Q4_1 (value = d·q + m). `qs` holds each
    /// block's 16 bytes as ggml does: byte `j` packs value `j` (low nibble) and `j + 16` (high).
    Nibbles {
        scales: Vec<u16>,
        mins: Option<Vec<u16>>,
        qs: Vec<u8>,
    },
    /// Q8_0: value = d·q, 32 signed bytes per block.
    Bytes { scales: Vec<u16>, qs: Vec<i8> },
    /// [`Packed::Nibbles`] with 16 rows interleaved (the AVX-512 layout, see `interleaved`).
    NibblesX16 {
        scales: Vec<u16>,
        mins: Option<Vec<u16>>,
        qs: Vec<u8>,
    },
    /// [`Packed::Bytes`] with 16 rows interleaved.
    BytesX16 { scales: Vec<u16>, qs: Vec<i8> },
    /// [`Packed::Nibbles`] with each row's blocks in groups of 8 (the AVX2 layout, see
    /// `block_groups`).
    NibblesG8 {
        scales: Vec<u16>,
        mins: Option<Vec<u16>>,
        qs: Vec<u8>,
    },
    /// [`Packed::Bytes`] with each row's blocks in groups of 8.
    BytesG8 { scales: Vec<u16>, qs: Vec<i8> },
    /// Q4_K, Q5_K, Q6_K super-blocks exactly as in the file.
    Super { kind: KQuant, data: Vec<u8> },
    /// Q4_K super-blocks with their nibbles grouped (the AVX2 layout, see `block_groups`).
    Q4KG8 { data: Vec<u8> },
    /// [`Packed::Super`] with 16 rows interleaved per super-block (the AVX-512 layout, see
    /// `kquant`).
    SuperX16 { kind: KQuant, data: Vec<u8> },
}

/// The k-quant formats, whose 256-value super-blocks the kernels decode themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KQuant {
    Q4,
    Q5,
    Q6,
}

fn f16_bits(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Rearranges ggml blocks (`data.len()` already checked to be `rows · cols / block_values ·
/// block_bytes`) into the kernel layout.
pub(crate) fn pack(ty: QuantType, data: &[u8]) -> Packed {
    let bb = ty.block_bytes();
    let blocks = data.chunks_exact(bb);
    match ty {
        QuantType::Q4_0 => Packed::Nibbles {
            scales: blocks.clone().map(|b| f16_bits(b, 0)).collect(),
            mins: None,
            qs: blocks.flat_map(|b| b[2..18].iter().copied()).collect(),
        },
        QuantType::Q4_1 => Packed::Nibbles {
            scales: blocks.clone().map(|b| f16_bits(b, 0)).collect(),
            mins: Some(blocks.clone().map(|b| f16_bits(b, 2)).collect()),
            qs: blocks.flat_map(|b| b[4..20].iter().copied()).collect(),
        },
        QuantType::Q8_0 => Packed::Bytes {
            scales: blocks.clone().map(|b| f16_bits(b, 0)).collect(),
            qs: blocks
                .flat_map(|b| b[2..34].iter().map(|&q| q as i8))
                .collect(),
        },
        QuantType::Q4K => Packed::Super {
            kind: KQuant::Q4,
            data: data.to_vec(),
        },
        QuantType::Q5K => Packed::Super {
            kind: KQuant::Q5,
            data: data.to_vec(),
        },
        QuantType::Q6K => Packed::Super {
            kind: KQuant::Q6,
            data: data.to_vec(),
        },
    }
}

pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Block `i`'s scale and offset in the 4-bit formats, `value = d·q + m`: Q4_1 stores `m`; Q4_0
/// stores none and means `d·(q − 8)`, i.e. `m = −8·d`. Every nibble layout dequantizes with this.
pub(crate) fn nibble_scale_min(scales: &[u16], mins: Option<&[u16]>, i: usize) -> (f32, f32) {
    let d = f16_to_f32(scales[i]);
    (d, mins.map_or(-8.0 * d, |m| f16_to_f32(m[i])))
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block
/// (ggml's `get_scale_min_k4`).
pub(crate) fn k4_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// One super-block decoded to integers: `q[i]` is value `i`'s quantized level, and value `i` is
/// `scale[i / group] · q[i] − min[i / group]` with `group` = 32 (Q4_K, Q5_K) or 16 (Q6_K, whose
/// levels are already centred, so its mins are 0). `scale = d · sc`, `min = dmin · m`: the
/// integer `sc`, `m` are kept too, for the dot products, which (as ggml's) sum in integers.
pub(crate) struct SuperBlock {
    pub q: [i8; 256],
    pub scale: [f32; 16],
    pub min: [f32; 16],
    pub sc: [i32; 16],
    pub m: [i32; 16],
    pub d: f32,
    pub dmin: f32,
    pub group: usize,
}

impl SuperBlock {
    #[inline(always)]
    pub fn decode(kind: KQuant, b: &[u8]) -> SuperBlock {
        let mut s = SuperBlock {
            q: [0; 256],
            scale: [0.0; 16],
            min: [0.0; 16],
            sc: [0; 16],
            m: [0; 16],
            d: 0.0,
            dmin: 0.0,
            group: 32,
        };
        match kind {
            KQuant::Q4 | KQuant::Q5 => {
                let d = f16_to_f32(f16_bits(b, 0));
                let dmin = f16_to_f32(f16_bits(b, 2));
                let scales = &b[4..16];
                for j in 0..8 {
                    let (sc, m) = k4_scale_min(j, scales);
                    s.scale[j] = d * sc as f32;
                    s.min[j] = dmin * m as f32;
                    (s.sc[j], s.m[j]) = (sc as i32, m as i32);
                }
                (s.d, s.dmin) = (d, dmin);
                let (qh, ql) = if kind == KQuant::Q5 {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for chunk in 0..4 {
                    for l in 0..32 {
                        let byte = ql[chunk * 32 + l];
                        let (mut lo, mut hi) = (byte & 0xF, byte >> 4);
                        if let Some(qh) = qh {
                            lo |= ((qh[l] >> (2 * chunk)) & 1) << 4;
                            hi |= ((qh[l] >> (2 * chunk + 1)) & 1) << 4;
                        }
                        s.q[chunk * 64 + l] = lo as i8;
                        s.q[chunk * 64 + 32 + l] = hi as i8;
                    }
                }
            }
            KQuant::Q6 => {
                s.group = 16;
                let (ql, qh) = (&b[0..128], &b[128..192]);
                let sc = &b[192..208];
                let d = f16_to_f32(f16_bits(b, 208));
                for (j, &scale) in sc.iter().enumerate() {
                    s.scale[j] = d * (scale as i8) as f32;
                    s.sc[j] = (scale as i8) as i32;
                }
                s.d = d;
                for half in 0..2 {
                    let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
                    let q = &mut s.q[half * 128..];
                    for l in 0..32 {
                        let level =
                            |low: u8, shift: u32| (low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32;
                        q[l] = level(ql[l] & 0xF, 0);
                        q[l + 32] = level(ql[l + 32] & 0xF, 2);
                        q[l + 64] = level(ql[l] >> 4, 4);
                        q[l + 96] = level(ql[l + 32] >> 4, 6);
                    }
                }
            }
        }
        s
    }

    pub fn value(&self, i: usize) -> f32 {
        let g = i / self.group;
        self.scale[g] * self.q[i] as f32 - self.min[g]
    }
}
