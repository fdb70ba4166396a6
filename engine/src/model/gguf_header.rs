//! Reading a GGUF header (metadata and tensor table) safely: what candle would panic on is
//! refused first. Every reader of GGUF metadata in the engine (weights, tokenizer, chat
//! template) goes through [`DecoderModel::read_gguf_header`].

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::Content;

use crate::model::DecoderModel;

impl DecoderModel {
    /// A GGUF header (metadata and tensor table) as candle reads it, with what candle would
    /// panic on refused first: `general.alignment = 0` divides by zero in
    /// `Content::read` (candle 0.11.1; found by the `gguf` fuzz target). Every reader of
    /// GGUF metadata in the engine goes through here. The reader is left anywhere.
    pub fn read_gguf_header<R: Read + Seek>(
        reader: &mut R,
    ) -> std::result::Result<Content, String> {
        let start = reader.stream_position().map_err(|e| e.to_string())?;
        // A header the scan cannot walk is left for candle to describe.
        if let Ok(Some(0)) = declared_alignment(reader) {
            return Err("general.alignment is 0; it must be a positive number of bytes".into());
        }
        reader
            .seek(SeekFrom::Start(start))
            .map_err(|e| e.to_string())?;
        Content::read(reader).map_err(|e| {
            // candle's "unknown dtype for tensor 23" names neither the tensor nor the type.
            let unknown = reader
                .seek(SeekFrom::Start(start))
                .and_then(|_| first_unloadable_tensor(reader));
            match unknown {
                Ok(Some((name, ty))) => format!(
                    "tensor '{name}' is stored as {} (ggml type {ty}), which Metrum cannot \
                     load; re-quantize the model to Q4_K_M, Q5_K_M, Q6_K or Q8_0 (llama-quantize)",
                    ggml_type_name(ty)
                ),
                _ => e.to_string(),
            }
        })
    }
}

/// The ggml tensor types candle 0.11 reads (its `GgmlDType::from_u32`).
const LOADABLE_TYPES: [u32; 15] = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

/// ggml's name for tensor type `ty` (ggml.h's `ggml_type`), for error messages.
fn ggml_type_name(ty: u32) -> String {
    let name = match ty {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("an unknown type {ty}"),
    };
    name.to_string()
}

/// GGUF's fixed start: magic, version, tensor count, metadata count. Returns whether lengths
/// are u64 (every version after v1) and the two counts; `None` when the magic is not GGUF.
fn read_preamble<R: Read>(r: &mut R) -> std::io::Result<Option<(bool, u64, u64)>> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Ok(None);
    }
    let wide = read_le::<4>(r)? != [1, 0, 0, 0];
    let tensor_count = read_len(r, wide)?;
    let kv_count = read_len(r, wide)?;
    Ok(Some((wide, tensor_count, kv_count)))
}

/// The first tensor (name, ggml type) of the tensor table whose type candle cannot read,
/// walking the header as GGUF lays it out; `None` if there is none or the walk fails.
fn first_unloadable_tensor<R: Read>(r: &mut R) -> std::io::Result<Option<(String, u32)>> {
    let Some((wide, tensor_count, kv_count)) = read_preamble(r)? else {
        return Ok(None);
    };
    for _ in 0..kv_count {
        let key_len = read_len(r, wide)?;
        let skipped = std::io::copy(&mut r.by_ref().take(key_len), &mut std::io::sink())?;
        let value_type = u32::from_le_bytes(read_le::<4>(r)?);
        if skipped != key_len || !skip_value(r, value_type, wide, 0)? {
            return Ok(None);
        }
    }
    for _ in 0..tensor_count {
        let name_len = read_len(r, wide)?;
        let mut name = Vec::new();
        if r.by_ref().take(name_len).read_to_end(&mut name)? as u64 != name_len {
            return Ok(None);
        }
        let dims = u32::from_le_bytes(read_le::<4>(r)?);
        for _ in 0..dims {
            read_len(r, wide)?;
        }
        let ty = u32::from_le_bytes(read_le::<4>(r)?);
        let _offset = read_le::<8>(r)?;
        if !LOADABLE_TYPES.contains(&ty) {
            return Ok(Some((String::from_utf8_lossy(&name).into_owned(), ty)));
        }
    }
    Ok(None)
}

/// Nested arrays deeper than this end the scan (candle refuses them too).
const MAX_ARRAY_DEPTH: u32 = 8;

/// The integer value of `general.alignment`, walking the metadata the way GGUF lays it out
/// (v1 lengths are u32, later ones u64). `None` when the header has no such integer.
fn declared_alignment<R: Read>(r: &mut R) -> std::io::Result<Option<u64>> {
    let Some((wide, _tensor_count, kv_count)) = read_preamble(r)? else {
        return Ok(None);
    };
    for _ in 0..kv_count {
        let key_len = read_len(r, wide)?;
        let mut key = Vec::new();
        if r.by_ref().take(key_len).read_to_end(&mut key)? as u64 != key_len {
            return Ok(None);
        }
        let value_type = u32::from_le_bytes(read_le::<4>(r)?);
        if key == b"general.alignment" {
            return Ok(match value_type {
                0 | 1 => Some(u64::from(read_le::<1>(r)?[0])),
                2 | 3 => Some(u64::from(u16::from_le_bytes(read_le::<2>(r)?))),
                4 | 5 => Some(u64::from(u32::from_le_bytes(read_le::<4>(r)?))),
                10 | 11 => Some(u64::from_le_bytes(read_le::<8>(r)?)),
                _ => None,
            });
        }
        if !skip_value(r, value_type, wide, 0)? {
            return Ok(None);
        }
    }
    Ok(None)
}

fn read_le<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_len(r: &mut impl Read, wide: bool) -> std::io::Result<u64> {
    Ok(if wide {
        u64::from_le_bytes(read_le::<8>(r)?)
    } else {
        u64::from(u32::from_le_bytes(read_le::<4>(r)?))
    })
}

/// Skips one value of `value_type`; `false` for an unknown type or a value cut short.
fn skip_value<R: Read>(
    r: &mut R,
    value_type: u32,
    wide: bool,
    depth: u32,
) -> std::io::Result<bool> {
    let fixed = match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    let skip = |r: &mut R, n: u64| -> std::io::Result<bool> {
        Ok(std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink())? == n)
    };
    match (value_type, fixed) {
        (_, Some(size)) => skip(r, size),
        (8, None) => {
            let len = read_len(r, wide)?;
            skip(r, len)
        }
        (9, None) if depth < MAX_ARRAY_DEPTH => {
            let item_type = u32::from_le_bytes(read_le::<4>(r)?);
            let count = read_len(r, wide)?;
            let item_size = match item_type {
                0 | 1 | 7 => Some(1u64),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            };
            if let Some(size) = item_size {
                return skip(r, count.saturating_mul(size));
            }
            // Each string or array item takes at least one length field, so a huge count
            // in a small file runs out of bytes quickly.
            for _ in 0..count {
                if !skip_value(r, item_type, wide, depth + 1)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}
