//! A step's instruction as a template, and the splitting of large inputs into chunks.
//!
//! Placeholders are `{{name}}` (spaces inside the braces are allowed):
//!
//! | placeholder | becomes |
//! | --- | --- |
//! | `{{input}}` | the text the provider is given: the step's input documents joined, or one chunk of it |
//! | `{{output.STEP}}` | the text of the output document of the job's earlier step `STEP` |
//! | `{{param.NAME}}` | the job's parameter `NAME` |
//! | `{{job}}`, `{{step}}`, `{{attempt}}` | the job's id, the step's name, the attempt's number |
//! | `{{chunk}}`, `{{chunks}}` | which chunk this call is given (from 1), and how many there are |
//!
//! A step waits for the steps whose outputs its instruction names, as for those among its inputs
//! ([`weft_actors::workflow::dependencies`]), and a workflow naming a step it does not have is refused.
//! A placeholder under `output.` or `param.` that names nothing the job has is an error (the task fails for
//! good: another attempt would fail the same way). Any other text in double braces is left as it is, so an
//! instruction may hold JSON or another template language's syntax.
//!
//! An input over a chunk's size is split into chunks of at most that many bytes, at a paragraph break where
//! there is one in the chunk's second half, else at a line break, a sentence end or a space, else at a
//! character boundary; each chunk is a call of its own and the answers are joined by a blank line.

use std::collections::BTreeMap;

/// The chunk size of an agent without the parameter `chunk_bytes`, in bytes: about 12,000 tokens of English,
/// which fits the context of every current model with room for the instruction and the answer.
pub const DEFAULT_CHUNK_BYTES: usize = 48 * 1024;

/// The smallest `chunk_bytes` an agent may set.
pub const MIN_CHUNK_BYTES: usize = 256;

/// The most chunks one task's input is split into; more is a task error naming both numbers.
pub const MAX_CHUNKS: usize = 256;

/// Why an instruction cannot be filled in, or an input not split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `{{output.STEP}}` names a step that has no output (yet), or `{{param.NAME}}` a parameter the job lacks.
    #[error("the instruction names {{{{{0}}}}}, which this job does not have")]
    Unknown(String),
    /// `{{output.STEP}}` or `{{param.NAME}}` without the name.
    #[error("the instruction has an empty {{{{{0}}}}}")]
    Empty(String),
    /// The input needs more chunks than [`MAX_CHUNKS`].
    #[error("the input of {bytes} bytes needs {chunks} chunks of {chunk_bytes} bytes, over the limit of {limit}")]
    TooManyChunks {
        /// The input's size.
        bytes: usize,
        /// The chunk size.
        chunk_bytes: usize,
        /// Chunks needed.
        chunks: usize,
        /// The limit.
        limit: usize,
    },
}

/// The values of one call's placeholders.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    /// `{{input}}`.
    pub input: &'a str,
    /// `{{output.STEP}}`, by step.
    pub outputs: &'a BTreeMap<String, String>,
    /// `{{param.NAME}}`, by name.
    pub parameters: &'a BTreeMap<String, String>,
    /// `{{job}}`, `{{step}}`, `{{attempt}}`, `{{chunk}}`, `{{chunks}}`.
    pub plain: BTreeMap<&'static str, String>,
}

/// Fills in `template`; see the module doc.
pub fn render(template: &str, values: &Values<'_>) -> Result<String, Error> {
    let mut out = String::with_capacity(template.len() + values.input.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        out.push_str(&rest[..open]);
        let name = after[..close].trim();
        let lookup = |map: &BTreeMap<String, String>, prefix: &str, key: &str| -> Result<String, Error> {
            if key.is_empty() {
                return Err(Error::Empty(prefix.to_owned()));
            }
            map.get(key).cloned().ok_or_else(|| Error::Unknown(name.to_owned()))
        };
        if name == "input" {
            out.push_str(values.input);
        } else if let Some(step) = name.strip_prefix("output.") {
            out.push_str(&lookup(values.outputs, "output.", step)?);
        } else if let Some(parameter) = name.strip_prefix("param.") {
            out.push_str(&lookup(values.parameters, "param.", parameter)?);
        } else if let Some(value) = values.plain.get(name) {
            out.push_str(value);
        } else {
            out.push_str(&rest[open..open + 2 + close + 2]);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits `text` into chunks of at most `chunk_bytes` bytes; see the module doc. An empty text is one chunk.
pub fn chunks(text: &str, chunk_bytes: usize) -> Result<Vec<&str>, Error> {
    let chunk_bytes = chunk_bytes.max(MIN_CHUNK_BYTES);
    let mut chunks = Vec::new();
    let mut rest = text;
    while rest.len() > chunk_bytes {
        let mut end = chunk_bytes;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let window = &rest[..end];
        // A cut in the window's second half, so that no chunk is much smaller than the size.
        let half = end / 2;
        let cut = ["\n\n", "\n", ". ", "! ", "? ", " "]
            .iter()
            .find_map(|separator| window.rfind(separator).map(|at| at + separator.len()).filter(|&at| at > half))
            .unwrap_or(end);
        chunks.push(&rest[..cut]);
        rest = &rest[cut..];
        if chunks.len() > MAX_CHUNKS {
            let needed = chunks.len() + rest.len().div_ceil(chunk_bytes);
            return Err(Error::TooManyChunks { bytes: text.len(), chunk_bytes, chunks: needed, limit: MAX_CHUNKS });
        }
    }
    chunks.push(rest);
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(outputs: &'a BTreeMap<String, String>, parameters: &'a BTreeMap<String, String>) -> Values<'a> {
        Values {
            input: "the text",
            outputs,
            parameters,
            plain: [("job", "j1".to_owned()), ("step", "s".to_owned())].into(),
        }
    }

    #[test]
    fn placeholders_are_filled_in_and_other_braces_are_left_alone() {
        let outputs = BTreeMap::from([("redact".to_owned(), "clean text".to_owned())]);
        let parameters = BTreeMap::from([("audience".to_owned(), "the board".to_owned())]);
        let rendered = render(
            "For {{ param.audience }}: {{input}} / {{output.redact}} in job {{job}} step {{step}}; keep {{other}} and {\"a\": 1} {{",
            &values(&outputs, &parameters),
        )
        .unwrap();
        assert_eq!(rendered, "For the board: the text / clean text in job j1 step s; keep {{other}} and {\"a\": 1} {{");
    }

    #[test]
    fn a_placeholder_naming_what_the_job_lacks_is_an_error() {
        let empty = BTreeMap::new();
        assert_eq!(render("{{param.tone}}", &values(&empty, &empty)), Err(Error::Unknown("param.tone".into())));
        assert_eq!(render("{{output.x}}", &values(&empty, &empty)), Err(Error::Unknown("output.x".into())));
        assert_eq!(render("{{param.}}", &values(&empty, &empty)), Err(Error::Empty("param.".into())));
        assert_eq!(
            Error::Unknown("param.tone".into()).to_string(),
            "the instruction names {{param.tone}}, which this job does not have"
        );
    }

    #[test]
    fn a_large_input_is_split_at_paragraphs_then_spaces_and_never_inside_a_character() {
        let paragraph = "word ".repeat(60); // 300 bytes
        let text = format!("{paragraph}\n\n{paragraph}\n\n{paragraph}");
        let parts = chunks(&text, 700).unwrap();
        assert_eq!(parts.concat(), text);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].ends_with("\n\n"), "{parts:?}");
        assert!(parts.iter().all(|p| p.len() <= 700));

        let spaced = "abc ".repeat(200);
        let parts = chunks(&spaced, 256).unwrap();
        assert_eq!(parts.concat(), spaced);
        assert!(parts.iter().all(|p| p.len() <= 256 && (p.ends_with(' ') || p == parts.last().unwrap())));

        let wide = "é".repeat(1000); // 2 bytes each, no separators
        let parts = chunks(&wide, 301).unwrap();
        assert_eq!(parts.concat(), wide);
        assert!(parts.iter().all(|p| p.len() <= 301));

        assert_eq!(chunks("", 1000).unwrap(), [""]);
        assert_eq!(chunks("short", 1000).unwrap(), ["short"]);
    }

    #[test]
    fn an_input_needing_too_many_chunks_is_refused_naming_the_numbers() {
        let text = "x".repeat(MIN_CHUNK_BYTES * (MAX_CHUNKS + 10));
        match chunks(&text, MIN_CHUNK_BYTES) {
            Err(Error::TooManyChunks { chunks, limit, chunk_bytes, bytes }) => {
                assert_eq!((limit, chunk_bytes, bytes), (MAX_CHUNKS, MIN_CHUNK_BYTES, text.len()));
                assert_eq!(chunks, MAX_CHUNKS + 10);
            }
            other => panic!("{other:?}"),
        }
    }
}
