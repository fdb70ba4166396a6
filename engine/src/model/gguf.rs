//! Loading llama GGUF files (llama.cpp's format): hyperparameters from `llama.*` metadata,
//! projection weights kept in their quantized blocks, the output head tied to `token_embd`
//! when the file has no `output.weight`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use candle_core::{DType, Device, Tensor};
use metrum_kernels::RopeStyle;

use crate::model::linear::{Embedding, Linear, SplitLinear, cpu_quant_type, linear_from_ggml};
use crate::model::{
    LayerWeights, LlamaConfig, LlamaModel, ModelError, ModelParts, Result, RopeScaling,
};

pub(crate) fn load(path: &Path, device: &Device, dtype: DType) -> Result<LlamaModel> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);
    let content =
        LlamaModel::read_gguf_header(&mut reader).map_err(|reason| ModelError::BadGguf {
            path: path.to_path_buf(),
            reason,
        })?;
    let mut gguf = GgufReader {
        path: path.to_path_buf(),
        content,
        reader,
        file_len,
        device: device.clone(),
    };
    let mut config = gguf.config()?;
    let parts = gguf.parts(&mut config, dtype)?;
    LlamaModel::from_parts(config, dtype, device, parts)
}

impl LlamaModel {
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
        Content::read(reader).map_err(|e| e.to_string())
    }
}

/// Weight tensors of one llama layer: two norms, q, k, v, o, gate, up, down.
const TENSORS_PER_LAYER: usize = 9;

/// Largest `context_length × head_dim` accepted: 1 GiB of f32 RoPE tables (2^19 for
/// SmolLM2, 2^24 for a 128k-context llama with head_dim 128).
const MAX_ROPE_TABLE_VALUES: usize = 1 << 28;

/// Nested arrays deeper than this end the scan (candle refuses them too).
const MAX_ARRAY_DEPTH: u32 = 8;

/// The integer value of `general.alignment`, walking the metadata the way GGUF lays it out
/// (v1 lengths are u32, later ones u64). `None` when the header has no such integer.
fn declared_alignment<R: Read>(r: &mut R) -> std::io::Result<Option<u64>> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Ok(None);
    }
    let wide = read_le::<4>(r)? != [1, 0, 0, 0];
    let _tensor_count = read_len(r, wide)?;
    let kv_count = read_len(r, wide)?;
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

struct GgufReader {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    file_len: u64,
    device: Device,
}

impl GgufReader {
    fn bad_config(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::BadConfig {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.metadata().get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        let value = match self.metadata().get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match *value {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return Err(self.bad_config(key, format!("expected an integer, got {value:?}"))),
        };
        usize::try_from(n)
            .map(Some)
            .map_err(|_| self.bad_config(key, format!("expected a non-negative integer, got {n}")))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.bad_config(key, "missing from the metadata"))
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.metadata().get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(self.bad_config(key, format!("expected a float, got {other:?}"))),
        }
    }

    fn config(&self) -> Result<LlamaConfig> {
        let arch = self.string("general.architecture").unwrap_or_default();
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: arch,
                expected: "llama (general.architecture)",
            });
        }
        if self.usize_opt("llama.expert_count")?.unwrap_or(0) > 1 {
            return Err(self.bad_config(
                "llama.expert_count",
                "mixture-of-experts llama is not supported",
            ));
        }
        let hidden_size = self.usize("llama.embedding_length")?;
        let num_heads = self.usize("llama.attention.head_count")?;
        let head_dim = match self.usize_opt("llama.attention.key_length")? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => return Err(self.bad_config("llama.attention.head_count", "must be positive")),
        };
        if let Some(rope_dim) = self.usize_opt("llama.rope.dimension_count")?
            && rope_dim != head_dim
        {
            return Err(self.bad_config(
                "llama.rope.dimension_count",
                format!("partial rotary ({rope_dim} of {head_dim} dims) is not supported"),
            ));
        }
        let rope_scaling = match self.string("llama.rope.scaling.type").as_deref() {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: self.f32_opt("llama.rope.scaling.factor")?.unwrap_or(1.0),
            },
            Some(other) => {
                return Err(self.bad_config(
                    "llama.rope.scaling.type",
                    format!("'{other}' is not supported (none or linear)"),
                ));
            }
        };
        let embed = self.info("token_embd.weight")?;
        let (vocab_size, embed_width) = match embed.shape.dims() {
            [v, h] => (*v, *h),
            dims => return Err(self.shape_error("token_embd.weight", dims, &[0, hidden_size])),
        };
        if embed_width != hidden_size {
            return Err(self.shape_error(
                "token_embd.weight",
                embed.shape.dims(),
                &[vocab_size, hidden_size],
            ));
        }
        let config = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: self.usize("llama.feed_forward_length")?,
            num_layers: self.usize("llama.block_count")?,
            num_heads,
            num_kv_heads: self
                .usize_opt("llama.attention.head_count_kv")?
                .unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: self
                .f32_opt("llama.attention.layer_norm_rms_epsilon")?
                .ok_or_else(|| {
                    self.bad_config(
                        "llama.attention.layer_norm_rms_epsilon",
                        "missing from the metadata",
                    )
                })?,
            rope_theta: self.f32_opt("llama.rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling,
            // llama.cpp permutes q/k rows at conversion so GGUF llama pairs adjacent elements.
            rope_style: RopeStyle::Interleaved,
            max_position_embeddings: self.usize("llama.context_length")?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
        };
        config
            .validate()
            .map_err(|reason| self.bad_config("llama.*", reason))?;
        self.check_sizes(&config)?;
        Ok(config)
    }

    /// Counts that size allocations before any tensor is read must be ones the file can
    /// back: a mutated `block_count` or `context_length` (found by the `gguf` fuzz target)
    /// otherwise asks for hundreds of GiB and aborts the process instead of failing the load.
    fn check_sizes(&self, c: &LlamaConfig) -> Result<()> {
        let tensors = self.content.tensor_infos.len();
        if c.num_layers > tensors / TENSORS_PER_LAYER {
            return Err(self.bad_config(
                "llama.block_count",
                format!(
                    "{} layers need {TENSORS_PER_LAYER} tensors each, but the file has {tensors} tensors",
                    c.num_layers
                ),
            ));
        }
        // The RoPE cos/sin tables hold context_length × head_dim f32 values between them.
        let rope_values = c.max_position_embeddings.checked_mul(c.head_dim);
        if rope_values.is_none_or(|v| v > MAX_ROPE_TABLE_VALUES) {
            return Err(self.bad_config(
                "llama.context_length",
                format!(
                    "{} positions × head_dim {} exceed the {MAX_ROPE_TABLE_VALUES} RoPE table entries \
                     supported (1 GiB)",
                    c.max_position_embeddings, c.head_dim
                ),
            ));
        }
        Ok(())
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    fn shape_error(&self, name: &str, found: &[usize], expected: &[usize]) -> ModelError {
        ModelError::TensorShape {
            path: self.path.clone(),
            name: name.to_string(),
            found: found.to_vec(),
            expected: expected.to_vec(),
        }
    }

    /// The raw blocks of tensor `name`, after checking its candle-order shape is `dims`.
    fn raw(&mut self, name: &str, dims: &[usize]) -> Result<(GgmlDType, Vec<u8>)> {
        let info = self.info(name)?;
        if info.shape.dims() != dims {
            return Err(self.shape_error(name, info.shape.dims(), dims));
        }
        let (dtype, offset) = (info.ggml_dtype, info.offset);
        let row = dims.last().copied().unwrap_or(1);
        if !row.is_multiple_of(dtype.block_size()) {
            return Err(self.bad_gguf(format!(
                "tensor '{name}' rows of {row} are not whole {dtype:?} blocks"
            )));
        }
        // Checked: a shape from the file can overflow, and a wrapped size would pass the
        // bounds check below with a buffer far smaller than the shape (found by fuzzing).
        let bytes = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| (n / dtype.block_size()).checked_mul(dtype.type_size()))
            .ok_or_else(|| {
                self.bad_gguf(format!("tensor '{name}' has an impossible shape {dims:?}"))
            })?;
        let start = self.content.tensor_data_offset.saturating_add(offset);
        if start.saturating_add(bytes as u64) > self.file_len {
            return Err(self.bad_gguf(format!(
                "tensor '{name}' needs bytes {start}..{} but the file has {} (truncated?)",
                start.saturating_add(bytes as u64),
                self.file_len
            )));
        }
        let mut data = vec![0u8; bytes];
        let read = self
            .reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.reader.read_exact(&mut data));
        read.map_err(|source| ModelError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok((dtype, data))
    }

    fn bad_gguf(&self, reason: String) -> ModelError {
        ModelError::BadGguf {
            path: self.path.clone(),
            reason,
        }
    }

    fn qtensor(&mut self, name: &str, dims: &[usize]) -> Result<QTensor> {
        let (dtype, data) = self.raw(name, dims)?;
        Ok(ggml_file::qtensor_from_ggml(
            dtype,
            &data,
            dims.to_vec(),
            &self.device,
        )?)
    }

    /// A 1-D norm weight, dequantized to `dtype`.
    fn norm(&mut self, name: &str, size: usize, dtype: DType) -> Result<Tensor> {
        let q = self.qtensor(name, &[size])?;
        Ok(q.dequantize(&self.device)?.to_dtype(dtype)?)
    }

    /// A projection: quantized weights stay quantized; f32/f16/bf16 ones become dense.
    fn linear(&mut self, name: &str, rows: usize, cols: usize, dtype: DType) -> Result<Linear> {
        let (ggml, data) = self.raw(name, &[rows, cols])?;
        Ok(linear_from_ggml(
            ggml,
            &data,
            rows,
            cols,
            &self.device,
            dtype,
        )?)
    }

    /// Several projections of one input, stacked into one matrix per run of equal ggml types
    /// (rows of quantized blocks are independent, so concatenating their bytes stacks them).
    fn split_linear<const N: usize>(
        &mut self,
        parts: [(&str, usize); N],
        cols: usize,
        dtype: DType,
    ) -> Result<SplitLinear<N>> {
        let mut groups: Vec<(GgmlDType, Vec<u8>, Vec<usize>)> = Vec::new();
        for (name, rows) in parts {
            let (ggml, data) = self.raw(name, &[rows, cols])?;
            match groups.last_mut() {
                Some((g, bytes, widths)) if *g == ggml => {
                    bytes.extend_from_slice(&data);
                    widths.push(rows);
                }
                _ => groups.push((ggml, data, vec![rows])),
            }
        }
        let mut linears = Vec::with_capacity(groups.len());
        for (ggml, data, widths) in groups {
            let rows = widths.iter().sum();
            let linear = linear_from_ggml(ggml, &data, rows, cols, &self.device, dtype)?;
            linears.push((linear, widths));
        }
        Ok(SplitLinear::new(linears)?)
    }

    /// The token embedding and the output head, which share one copy of the weights when tied.
    fn embedding_and_head(&mut self, c: &LlamaConfig, dtype: DType) -> Result<(Embedding, Linear)> {
        let (vocab, h) = (c.vocab_size, c.hidden_size);
        let untied = |me: &mut Self| me.linear("output.weight", vocab, h, dtype);
        let (ggml, data) = self.raw("token_embd.weight", &[vocab, h])?;
        if self.device.is_cpu() && cpu_quant_type(ggml).is_some() {
            let Linear::CpuQuantized(table) =
                linear_from_ggml(ggml, &data, vocab, h, &self.device, dtype)?
            else {
                return Err(
                    self.bad_gguf(format!("token_embd.weight: {ggml:?} is not CPU-quantized"))
                );
            };
            let head = if c.tie_word_embeddings {
                Linear::CpuQuantized(table.clone())
            } else {
                untied(self)?
            };
            return Ok((Embedding::CpuQuantized(table), head));
        }
        let embed = Arc::new(ggml_file::qtensor_from_ggml(
            ggml,
            &data,
            vec![vocab, h],
            &self.device,
        )?);
        let head = if !c.tie_word_embeddings {
            untied(self)?
        } else {
            match embed.dtype() {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                    Linear::Dense(embed.dequantize(&self.device)?.to_dtype(dtype)?)
                }
                _ => Linear::quantized(embed.clone()),
            }
        };
        Ok((Embedding::Quantized(embed), head))
    }

    fn parts(&mut self, config: &mut LlamaConfig, dtype: DType) -> Result<ModelParts> {
        let c = config.clone();
        let (h, q, kv, ff) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size);
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            let factors = self.norm("rope_freqs.weight", c.head_dim / 2, DType::F32)?;
            config.rope_scaling = RopeScaling::FrequencyFactors(factors.to_vec1::<f32>()?);
        }
        let (embed, lm_head) = self.embedding_and_head(&c, dtype)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let name = |suffix: &str| format!("blk.{i}.{suffix}.weight");
            let (qn, kn, vn) = (name("attn_q"), name("attn_k"), name("attn_v"));
            let (gn, un) = (name("ffn_gate"), name("ffn_up"));
            layers.push(LayerWeights {
                attn_norm: self.norm(&name("attn_norm"), h, dtype)?,
                qkv: self.split_linear([(&qn, q), (&kn, kv), (&vn, kv)], h, dtype)?,
                o_proj: self.linear(&name("attn_output"), h, q, dtype)?,
                mlp_norm: self.norm(&name("ffn_norm"), h, dtype)?,
                gate_up: self.split_linear([(&gn, ff), (&un, ff)], h, dtype)?,
                down: self.linear(&name("ffn_down"), h, ff, dtype)?,
            });
        }
        Ok(ModelParts {
            embed,
            layers,
            final_norm: self.norm("output_norm.weight", h, dtype)?,
            lm_head,
        })
    }
}
