//! What a loaded GGUF file says about itself, read once when the model is
//! loaded, in the terms Ollama's `/api/tags`, `/api/show` and `/api/ps`
//! use: the architecture (Ollama's `family`), the parameter count and its
//! human form (`parameter_size`), the file's quantization, the chat
//! template, and the metadata as `model_info`. Lives in memory with the
//! served model.

use flotilla_gguf::{GgufHeader, MetadataValue};
use serde_json::{Map, Value};

/// Arrays longer than this (the tokenizer's tokens, scores, merges) are
/// left out of `model_info`: tens of thousands of entries that no client
/// reads, which Ollama too leaves out unless asked (`verbose`).
const MAX_ARRAY_SHOWN: usize = 64;

/// A loaded model's self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCard {
    /// `general.architecture` (`llama`, `qwen2`, …).
    pub architecture: String,
    /// Elements of every tensor together.
    pub parameter_count: u64,
    /// The file's quantization (`general.file_type`, else the weights'
    /// most common type), `None` when it says neither.
    pub file_type: Option<String>,
    /// The chat template requests are rendered with: the assignment's, else
    /// the file's, else the engine's fallback.
    pub template: String,
    /// `general.*`, `<architecture>.*` and the tokenizer's scalar keys,
    /// with `general.parameter_count` added as Ollama adds it.
    pub model_info: Map<String, Value>,
}

impl ModelCard {
    /// Reads `header`; `template` is the one requests are rendered with.
    pub fn from_header(header: &GgufHeader, template: &str) -> ModelCard {
        let parameter_count = header.parameter_count();
        let mut model_info = Map::new();
        for (key, value) in header.metadata.iter() {
            if key == "tokenizer.chat_template" {
                // Shown as the template.
                continue;
            }
            if let Some(value) = json_value(value) {
                model_info.insert(key.to_owned(), value);
            }
        }
        model_info
            .entry("general.parameter_count")
            .or_insert_with(|| Value::from(parameter_count));
        ModelCard {
            architecture: header.architecture().unwrap_or_default().to_owned(),
            parameter_count,
            file_type: header.quantization(),
            template: template.to_owned(),
            model_info,
        }
    }

    /// The parameter count as Ollama writes it (`134.52M`, `1.5B`).
    pub fn parameter_size(&self) -> String {
        human_number(self.parameter_count)
    }
}

/// A metadata value as JSON; `None` for a long array (see
/// [`MAX_ARRAY_SHOWN`]). A float that JSON cannot hold (NaN) is `null`.
fn json_value(value: &MetadataValue) -> Option<Value> {
    Some(match value {
        MetadataValue::U8(number) => Value::from(*number),
        MetadataValue::I8(number) => Value::from(*number),
        MetadataValue::U16(number) => Value::from(*number),
        MetadataValue::I16(number) => Value::from(*number),
        MetadataValue::U32(number) => Value::from(*number),
        MetadataValue::I32(number) => Value::from(*number),
        MetadataValue::U64(number) => Value::from(*number),
        MetadataValue::I64(number) => Value::from(*number),
        MetadataValue::F32(number) => Value::from(f64::from(*number)),
        MetadataValue::F64(number) => Value::from(*number),
        MetadataValue::Bool(flag) => Value::from(*flag),
        MetadataValue::String(text) => Value::from(text.as_str()),
        MetadataValue::Array(items) if items.len() > MAX_ARRAY_SHOWN => return None,
        MetadataValue::Array(items) => Value::Array(items.iter().filter_map(json_value).collect()),
    })
}

/// Ollama's `format.HumanNumber`: whole numbers without decimals, else two
/// decimals for millions and one for billions (SmolLM2 135M has 134,515,008
/// parameters and Ollama lists it as `134.52M`).
pub fn human_number(count: u64) -> String {
    const THOUSAND: f64 = 1e3;
    const MILLION: f64 = 1e6;
    const BILLION: f64 = 1e9;
    let number = count as f64;
    let whole = |scaled: f64| scaled == scaled.floor();
    if number >= BILLION {
        let scaled = number / BILLION;
        if whole(scaled) {
            format!("{scaled:.0}B")
        } else {
            format!("{scaled:.1}B")
        }
    } else if number >= MILLION {
        let scaled = number / MILLION;
        if whole(scaled) {
            format!("{scaled:.0}M")
        } else {
            format!("{scaled:.2}M")
        }
    } else if number >= THOUSAND {
        format!("{:.0}K", number / THOUSAND)
    } else {
        count.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sizes_read_as_ollama_writes_them() {
        assert_eq!(human_number(134_515_008), "134.52M");
        assert_eq!(human_number(135_000_000), "135M");
        assert_eq!(human_number(494_032_768), "494.03M");
        assert_eq!(human_number(1_543_714_304), "1.5B");
        assert_eq!(human_number(7_000_000_000), "7B");
        assert_eq!(human_number(12_345), "12K");
        assert_eq!(human_number(999), "999");
    }
}
