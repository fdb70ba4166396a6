//! Loading GGUF files (llama.cpp's format) of every supported family: hyperparameters from
//! `<general.architecture>.*` metadata (read by the family mappings in `family/`),
//! projection weights kept in their quantized blocks under llama.cpp's tensor names, the
//! output head tied to `token_embd` when the file has no `output.weight`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use candle_core::{DType, Device, Tensor};
use metrum_kernels::RopeStyle;

use crate::model::arch::{ArchSpec, Family};
use crate::model::family::{self, ConfigIssue};
use crate::model::linear::{Embedding, Linear, SplitLinear, cpu_quant_type, linear_from_ggml};
use crate::model::moe::{Experts, FeedForward, GatedMlp, MoeBlock};
use crate::model::{
    DecoderModel, LayerWeights, ModelConfig, ModelError, ModelParts, MoeConfig, Result, RopeScaling,
};

/// Largest `context_length × rotary_dim` accepted: 1 GiB of f32 RoPE tables (2^19 for
/// SmolLM2, 2^24 for a 128k-context llama with head_dim 128).
const MAX_ROPE_TABLE_VALUES: usize = 1 << 28;

pub(crate) fn load(path: &Path, device: &Device, dtype: DType) -> Result<DecoderModel> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);
    let content =
        DecoderModel::read_gguf_header(&mut reader).map_err(|reason| ModelError::BadGguf {
            path: path.to_path_buf(),
            reason,
        })?;
    let mut gguf = GgufReader {
        path: path.to_path_buf(),
        content,
        reader,
        file_len,
        device: device.clone(),
        slow_types: Vec::new(),
    };
    let config = gguf.config()?;
    let parts = gguf.parts(&config, dtype)?;
    DecoderModel::from_parts(config, dtype, device, parts)
}

struct GgufReader {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    file_len: u64,
    device: Device,
    /// Quantized types met so far that Metrum's CPU kernels lack (logged once each).
    slow_types: Vec<GgmlDType>,
}

impl GgufReader {
    fn meta(&self) -> GgufMeta<'_> {
        GgufMeta {
            prefix: self.architecture(),
            content: &self.content,
        }
    }

    fn architecture(&self) -> &str {
        match self.content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s,
            _ => "",
        }
    }

    fn bad_config(&self, issue: ConfigIssue) -> ModelError {
        ModelError::BadConfig {
            path: self.path.clone(),
            key: issue.key,
            reason: issue.reason,
        }
    }

    /// The family from `general.architecture`, the shared keys, the family's mapping, then
    /// the tensors that are hyperparameters (RoPE factors), all checked before any weight.
    fn config(&mut self) -> Result<ModelConfig> {
        let arch = self.architecture().to_string();
        let family =
            Family::from_gguf(&arch).ok_or_else(|| ModelError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: if arch.is_empty() {
                    "none (no general.architecture)".into()
                } else {
                    arch.clone()
                },
                supported: Family::supported_gguf(),
            })?;
        let mut config = {
            let meta = self.meta();
            let base = self.shared_fields(&meta, family)?;
            family::from_gguf(family, &meta, base).map_err(|issue| self.bad_config(issue))?
        };
        self.rope_factor_tensors(&mut config)?;
        config.validate().map_err(|(key, reason)| {
            self.bad_config(ConfigIssue::new(format!("{arch}.* ({key})"), reason))
        })?;
        self.check_sizes(&config)?;
        Ok(config)
    }

    /// The keys every family stores under `<arch>.`: shapes, norm epsilon, RoPE base and
    /// dims, context; vocabulary and tying from the tensor table.
    fn shared_fields(&self, meta: &GgufMeta, family: Family) -> Result<ModelConfig> {
        let issue = |e: ConfigIssue| self.bad_config(e);
        let hidden_size = meta.usize("embedding_length").map_err(issue)?;
        let num_heads = meta.usize("attention.head_count").map_err(issue)?;
        let head_dim = match meta.usize_opt("attention.key_length").map_err(issue)? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => {
                return Err(issue(ConfigIssue::new(
                    meta.key("attention.head_count"),
                    "must be positive",
                )));
            }
        };
        if let Some(v) = meta.usize_opt("attention.value_length").map_err(issue)?
            && v != head_dim
        {
            return Err(issue(ConfigIssue::new(
                meta.key("attention.value_length"),
                format!("{v} differs from the key length {head_dim}; not supported"),
            )));
        }
        let rotary_dim = meta
            .usize_opt("rope.dimension_count")
            .map_err(issue)?
            .filter(|&d| d != head_dim);
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
        Ok(ModelConfig {
            arch: ArchSpec {
                family,
                ..ArchSpec::llama()
            },
            vocab_size,
            hidden_size,
            intermediate_size: meta.usize("feed_forward_length").map_err(issue)?,
            num_layers: meta.usize("block_count").map_err(issue)?,
            num_heads,
            num_kv_heads: meta
                .usize_opt("attention.head_count_kv")
                .map_err(issue)?
                .unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: meta
                .f32_opt("attention.layer_norm_rms_epsilon")
                .map_err(issue)?
                .ok_or_else(|| {
                    issue(ConfigIssue::new(
                        meta.key("attention.layer_norm_rms_epsilon"),
                        "missing from the metadata",
                    ))
                })?,
            rope_theta: meta
                .f32_opt("rope.freq_base")
                .map_err(issue)?
                .unwrap_or(10_000.0),
            rope_scaling: RopeScaling::None,
            // Only llama's converter permutes q/k for interleaved pairs; its mapping says so.
            rope_style: RopeStyle::Neox,
            rotary_dim,
            rope_local_theta: None,
            max_position_embeddings: meta.usize("context_length").map_err(issue)?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            layer_windows: Vec::new(),
            attn_scale: None,
            moe: None,
        })
    }

    /// RoPE hyperparameters llama.cpp stores as tensors: llama 3's `rope_freqs` and Phi-3's
    /// LongRoPE `rope_factors_long` / `rope_factors_short`.
    fn rope_factor_tensors(&mut self, config: &mut ModelConfig) -> Result<()> {
        let half = config.rotary_dim() / 2;
        if self.content.tensor_infos.contains_key("rope_freqs.weight")
            && config.rope_scaling == RopeScaling::None
        {
            let factors = self.norm("rope_freqs.weight", half, DType::F32)?;
            config.rope_scaling = RopeScaling::FrequencyFactors(factors.to_vec1::<f32>()?);
        }
        if let RopeScaling::LongRope { short, long, .. } = &mut config.rope_scaling {
            *long = self
                .norm("rope_factors_long.weight", half, DType::F32)?
                .to_vec1::<f32>()?;
            *short = self
                .norm("rope_factors_short.weight", half, DType::F32)?
                .to_vec1::<f32>()?;
        }
        Ok(())
    }

    /// Counts that size allocations before any tensor is read must be ones the file can
    /// back: a mutated `block_count` or `context_length` (found by the `gguf` fuzz target)
    /// otherwise asks for hundreds of GiB and aborts the process instead of failing the load.
    fn check_sizes(&self, c: &ModelConfig) -> Result<()> {
        let arch = self.architecture().to_string();
        let tensors = self.content.tensor_infos.len();
        let per_layer = tensors_per_layer(c);
        if c.num_layers > tensors / per_layer {
            return Err(self.bad_config(ConfigIssue::new(
                format!("{arch}.block_count"),
                format!(
                    "{} layers need {per_layer} tensors each, but the file has {tensors} tensors",
                    c.num_layers
                ),
            )));
        }
        // The RoPE cos/sin tables hold context_length × rotary_dim f32 values between them.
        let rope_values = c.max_position_embeddings.checked_mul(c.rotary_dim());
        if rope_values.is_none_or(|v| v > MAX_ROPE_TABLE_VALUES) {
            return Err(self.bad_config(ConfigIssue::new(
                format!("{arch}.context_length"),
                format!(
                    "{} positions × rotary dims {} exceed the {MAX_ROPE_TABLE_VALUES} RoPE table \
                     entries supported (1 GiB)",
                    c.max_position_embeddings,
                    c.rotary_dim()
                ),
            )));
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
        let dense = matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if self.device.is_cpu()
            && !dense
            && cpu_quant_type(dtype).is_none()
            && !self.slow_types.contains(&dtype)
        {
            self.slow_types.push(dtype);
            tracing::warn!(
                "tensor '{name}' (and any other {dtype:?} one) has no Metrum CPU kernel: it runs \
                 on candle's quantized matmul, several times slower than Q4_K/Q5_K/Q6_K/Q8_0"
            );
        }
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
        let mut blocks = Vec::with_capacity(N);
        for (name, rows) in parts {
            let (ggml, data) = self.raw(name, &[rows, cols])?;
            blocks.push((ggml, data, rows));
        }
        self.stack(blocks, cols, dtype)
    }

    /// [`GgufReader::split_linear`] over blocks already read: `(type, bytes, rows)` each.
    fn stack<const N: usize>(
        &self,
        parts: Vec<(GgmlDType, Vec<u8>, usize)>,
        cols: usize,
        dtype: DType,
    ) -> Result<SplitLinear<N>> {
        let mut groups: Vec<(GgmlDType, Vec<u8>, Vec<usize>)> = Vec::new();
        for (ggml, data, rows) in parts {
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

    /// One sparse layer: the router `ffn_gate_inp` and the experts stacked in the 3-D
    /// `ffn_{gate,up,down}_exps` (`[experts, rows, cols]`, each expert's blocks contiguous),
    /// cut into one matrix per expert so they stay quantized and run on the usual kernels.
    fn experts(
        &mut self,
        c: &ModelConfig,
        moe: &MoeConfig,
        layer: usize,
        dtype: DType,
    ) -> Result<MoeBlock> {
        let (h, ff, n) = (c.hidden_size, moe.expert_intermediate_size, moe.num_experts);
        let name = |suffix: &str| format!("blk.{layer}.{suffix}.weight");
        let router = self.linear(&name("ffn_gate_inp"), n, h, dtype)?;
        let per_expert = |(ggml, data): (GgmlDType, Vec<u8>)| -> Vec<(GgmlDType, Vec<u8>)> {
            let size = data.len() / n;
            data.chunks_exact(size)
                .map(|c| (ggml, c.to_vec()))
                .collect()
        };
        let gates = per_expert(self.raw(&name("ffn_gate_exps"), &[n, ff, h])?);
        let ups = per_expert(self.raw(&name("ffn_up_exps"), &[n, ff, h])?);
        let downs = per_expert(self.raw(&name("ffn_down_exps"), &[n, h, ff])?);
        let mut experts = Vec::with_capacity(n);
        for ((gate, up), (down_type, down)) in gates.into_iter().zip(ups).zip(downs) {
            let gate_up = self.stack(vec![(gate.0, gate.1, ff), (up.0, up.1, ff)], h, dtype)?;
            let down = linear_from_ggml(down_type, &down, h, ff, &self.device, dtype)?;
            experts.push(GatedMlp { gate_up, down });
        }
        Ok(MoeBlock {
            router,
            experts: Experts::for_device(experts, &self.device)?,
            experts_per_token: moe.experts_per_token,
            renormalize: moe.renormalize,
        })
    }

    /// The token embedding and the output head, which share one copy of the weights when tied.
    fn embedding_and_head(&mut self, c: &ModelConfig, dtype: DType) -> Result<(Embedding, Linear)> {
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

    fn parts(&mut self, c: &ModelConfig, dtype: DType) -> Result<ModelParts> {
        let (h, q, kv, ff) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size);
        let arch = c.arch.clone();
        let fused = c.family().fused_projections();
        let (embed, lm_head) = self.embedding_and_head(c, dtype)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let name = |suffix: &str| format!("blk.{i}.{suffix}.weight");
            let qkv = if fused {
                let linear = self.linear(&name("attn_qkv"), q + 2 * kv, h, dtype)?;
                SplitLinear::new(vec![(linear, vec![q, kv, kv])])?
            } else {
                let (qn, kn, vn) = (name("attn_q"), name("attn_k"), name("attn_v"));
                self.split_linear([(&qn, q), (&kn, kv), (&vn, kv)], h, dtype)?
            };
            let qkv_bias = if arch.qkv_bias {
                let bias = |me: &mut Self, part: &str, size| {
                    me.norm(&format!("blk.{i}.{part}.bias"), size, dtype)
                };
                Some([
                    bias(self, "attn_q", q)?,
                    bias(self, "attn_k", kv)?,
                    bias(self, "attn_v", kv)?,
                ])
            } else {
                None
            };
            let qk_norm = if arch.qk_norm {
                Some([
                    self.norm(&name("attn_q_norm"), c.head_dim, dtype)?,
                    self.norm(&name("attn_k_norm"), c.head_dim, dtype)?,
                ])
            } else {
                None
            };
            let ffn = match &c.moe {
                Some(moe) if moe.is_sparse(i) => {
                    FeedForward::Experts(self.experts(c, moe, i, dtype)?)
                }
                _ => {
                    let gate_up = if fused {
                        let linear = self.linear(&name("ffn_up"), 2 * ff, h, dtype)?;
                        SplitLinear::new(vec![(linear, vec![ff, ff])])?
                    } else {
                        let (gn, un) = (name("ffn_gate"), name("ffn_up"));
                        self.split_linear([(&gn, ff), (&un, ff)], h, dtype)?
                    };
                    let down = self.linear(&name("ffn_down"), h, ff, dtype)?;
                    FeedForward::Dense(GatedMlp { gate_up, down })
                }
            };
            let sandwich = |me: &mut Self, suffix: &str| -> Result<Option<Tensor>> {
                Ok(if arch.sandwich_norms {
                    Some(me.norm(&name(suffix), h, dtype)?)
                } else {
                    None
                })
            };
            layers.push(LayerWeights {
                attn_norm: self.norm(&name("attn_norm"), h, dtype)?,
                qkv,
                qkv_bias,
                qk_norm,
                o_proj: self.linear(&name("attn_output"), h, q, dtype)?,
                post_attn_norm: sandwich(self, "post_attention_norm")?,
                mlp_norm: self.norm(&name("ffn_norm"), h, dtype)?,
                ffn,
                post_mlp_norm: sandwich(self, "post_ffw_norm")?,
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

/// The tensors each layer of `c` has in a GGUF file (a lower bound for the size check).
fn tensors_per_layer(c: &ModelConfig) -> usize {
    let a = &c.arch;
    // A sparse layer has the router and three stacked expert tensors instead of three.
    let projections = if c.family().fused_projections() {
        4
    } else if c.moe.is_some() {
        8
    } else {
        7
    };
    2 + projections
        + if a.qkv_bias { 3 } else { 0 }
        + if a.qk_norm { 2 } else { 0 }
        + if a.sandwich_norms { 2 } else { 0 }
}

/// Typed access to one file's `<arch>.*` metadata, for the family mappings.
pub(crate) struct GgufMeta<'a> {
    prefix: &'a str,
    content: &'a Content,
}

impl GgufMeta<'_> {
    /// The full key of `suffix` under this file's architecture.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn value(&self, suffix: &str) -> Option<&Value> {
        self.content.metadata.get(&self.key(suffix))
    }

    pub fn string(&self, suffix: &str) -> Option<String> {
        match self.value(suffix) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn usize_opt(&self, suffix: &str) -> std::result::Result<Option<usize>, ConfigIssue> {
        let Some(value) = self.value(suffix) else {
            return Ok(None);
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
            _ => {
                return Err(ConfigIssue::new(
                    self.key(suffix),
                    format!("expected an integer, got {value:?}"),
                ));
            }
        };
        usize::try_from(n).map(Some).map_err(|_| {
            ConfigIssue::new(
                self.key(suffix),
                format!("expected a non-negative integer, got {n}"),
            )
        })
    }

    pub fn usize(&self, suffix: &str) -> std::result::Result<usize, ConfigIssue> {
        self.usize_opt(suffix)?
            .ok_or_else(|| ConfigIssue::new(self.key(suffix), "missing from the metadata"))
    }

    /// An array of booleans (Gemma 3's per-layer `sliding_window_pattern`).
    pub fn bool_array(&self, suffix: &str) -> std::result::Result<Option<Vec<bool>>, ConfigIssue> {
        match self.value(suffix) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect::<Option<Vec<bool>>>()
                .map(Some)
                .ok_or_else(|| ConfigIssue::new(self.key(suffix), "expected booleans")),
            Some(other) => Err(ConfigIssue::new(
                self.key(suffix),
                format!("expected an array of booleans, got {other:?}"),
            )),
        }
    }

    pub fn bool_opt(&self, suffix: &str) -> std::result::Result<Option<bool>, ConfigIssue> {
        match self.value(suffix) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ConfigIssue::new(
                self.key(suffix),
                format!("expected a boolean, got {other:?}"),
            )),
        }
    }

    pub fn f32_opt(&self, suffix: &str) -> std::result::Result<Option<f32>, ConfigIssue> {
        match self.value(suffix) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(ConfigIssue::new(
                self.key(suffix),
                format!("expected a float, got {other:?}"),
            )),
        }
    }
}
