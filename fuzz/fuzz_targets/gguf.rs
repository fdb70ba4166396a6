//! The GGUF loading path on mutated files: the engine's header reader (candle's parser behind
//! the engine's own checks, from bytes), then what the engine builds from it: the tokenizer
//! and chat template from the metadata, and the model from the file (written to a scratch
//! file, since the loader takes a path).
//!
//! Oracles: nothing panics, aborts or allocates without bound; a bad file is an error.

#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use metrum_engine::chat_template::{ChatMessage, ChatTemplate};
use metrum_engine::model::DecoderModel;
use metrum_engine::tokenizer::Tokenizer;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch file per fuzzing process, in memory where the system has /dev/shm.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("metrum-fuzz-{}.gguf", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(content) = DecoderModel::read_gguf_header(&mut Cursor::new(data)) else {
        return;
    };
    if let Ok(tokenizer) = Tokenizer::from_gguf_metadata(&content.metadata) {
        let ids = tokenizer.encode("Hello, world! \u{1F600}", true);
        if let Ok(ids) = ids {
            let _ = tokenizer.decode(&ids, false);
        }
    }
    if let Ok(Some(template)) = ChatTemplate::from_gguf_metadata(&content.metadata, "<s>", "</s>") {
        let _ = template.render(&[ChatMessage::new("user", "hi")], true);
    }
    if std::fs::write(scratch(), data).is_ok() {
        let _ = DecoderModel::load_gguf(scratch(), &Device::Cpu, DType::F32);
    }
});
