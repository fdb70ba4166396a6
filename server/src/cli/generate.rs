//! `metrum generate`: one completion for one prompt, printed as it is produced. Greedy unless
//! `--temperature` is given; `--chat` wraps the prompt in the model's chat template first.
//! Runs the same engine thread as `serve`, through `EngineHandle::submit_blocking`.

use anyhow::{Context, bail};
use metrum_core::SamplingParams;
use metrum_engine::chat_template::ChatMessage;
use metrum_engine::config::{DeviceSpec, EngineConfig};
use metrum_engine::handle::{EngineHandle, EngineRequest, EngineStatus, StreamEvent};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, clap::Args)]
pub struct GenerateArgs {
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Apply the model's chat template (the prompt becomes one user message).
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate (capped by the context length).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; greedy when absent.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Same forms as `serve --model`; default: the default model.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16"])]
    pub dtype: String,
    #[arg(long)]
    pub threads: Option<usize>,
}

impl GenerateArgs {
    pub fn run(self) -> anyhow::Result<()> {
        super::init_tracing_at(false, "warn");
        let config = EngineConfig {
            model: self.model.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            threads: self.threads,
            seed: self.seed.unwrap_or(0),
            ..EngineConfig::default()
        };
        let engine = metrum_engine::engine_loop::spawn(config)
            .map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?;
        let result = self.generate(&engine, &mut std::io::stdout().lock());
        engine.shutdown();
        result
    }

    /// Generates into `out`, one delta at a time.
    pub fn generate(&self, engine: &EngineHandle, out: &mut impl Write) -> anyhow::Result<()> {
        wait_until_ready(engine)?;
        let codec = engine
            .text()
            .context("the engine is ready but has no tokenizer")?;
        let prompt_tokens = if self.chat {
            let turns = [ChatMessage::new("user", self.prompt.clone())];
            let rendered = codec
                .render_chat(&turns, true)
                .map_err(|e| anyhow::anyhow!("cannot apply the chat template: {e}"))?;
            codec.tokenizer.encode(&rendered, false)
        } else {
            codec.tokenizer.encode(&self.prompt, true)
        }
        .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?;
        let info = engine
            .model_info()
            .context("the engine is ready but has no model info")?;
        let room = info.max_model_len.saturating_sub(prompt_tokens.len());
        if prompt_tokens.is_empty() || room == 0 {
            bail!(
                "the prompt has {} tokens; the context holds {}",
                prompt_tokens.len(),
                info.max_model_len
            );
        }
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(0.0),
            seed: self.seed,
            max_tokens: self.max_tokens.min(room),
            ..SamplingParams::default()
        };
        params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let request = EngineRequest {
            prompt_tokens,
            params,
            priority: 0,
            arrival: Instant::now(),
            slo: Default::default(),
            constraint: None,
            speculative: true,
        };
        let mut stream = engine
            .submit_blocking(request)
            .map_err(|e| anyhow::anyhow!("the engine refused the request: {e}"))?;
        loop {
            match stream.next_blocking() {
                Some(StreamEvent::Delta { text, .. }) => {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
                Some(StreamEvent::Finished { .. }) => {
                    writeln!(out)?;
                    return Ok(());
                }
                Some(StreamEvent::Error { message }) => bail!("generation failed: {message}"),
                None => bail!("the engine stopped before the request finished"),
            }
        }
    }
}

/// Blocks until the model has loaded, or fails with the engine's reason.
fn wait_until_ready(engine: &EngineHandle) -> anyhow::Result<()> {
    loop {
        match engine.status() {
            EngineStatus::Ready => return Ok(()),
            EngineStatus::Failed(why) => bail!("the model failed to load: {why}"),
            EngineStatus::Draining => bail!("the engine is shutting down"),
            EngineStatus::Loading => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
