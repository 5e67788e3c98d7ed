//! The `builtin` provider: offline, deterministic text tasks that run with no key and no network. The agent's
//! `model` names the task:
//!
//! | model | what it writes | parameters |
//! | --- | --- | --- |
//! | `summarize` | the input's highest-scoring sentences, in their order (extractive: a sentence scores the mean frequency of its content words in the document) | `sentences` (3) |
//! | `keywords` | the most frequent content words, one per line, with their counts | `count` (10) |
//! | `redact` | the input with e-mail addresses, card numbers (13–19 digits passing the Luhn check) and phone numbers (8–15 digits) replaced by `[email]`, `[card]`, `[phone]` | - |
//! | `stats` | JSON: characters, letters, digits, whitespace, punctuation, words, unique words, sentences, lines, paragraphs, reading minutes at 200 words a minute; by Unicode class, so any script counts | - |
//! | `convert` | the input converted between plain text, Markdown and HTML | `from` (`text`, `markdown`, `html`; guessed from the content type), `to` (`markdown`, `html`, `text`) |
//! | `echo` | the input as it is | - |
//!
//! Words are split on anything that is not a letter or a digit, so the tasks work in any language that
//! separates words with spaces or punctuation; "content words" are words of three or more characters that
//! are not on a short English stop list. Tokens are counted as words, in and out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use weft_events::domain::agent::Param;

use super::{Completion, Error, Provider, Request};

/// The provider's name in an agent's profile.
pub const NAME: &str = "builtin";

/// The models (tasks) it knows.
pub const MODELS: [&str; 6] = ["summarize", "keywords", "redact", "stats", "convert", "echo"];

/// See the module doc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtin;

#[async_trait::async_trait]
impl Provider for Builtin {
    fn name(&self) -> &str {
        NAME
    }

    async fn complete(&self, request: Request) -> Result<Completion, Error> {
        let input = &request.input;
        let (text, content_type) = match request.model.as_str() {
            "summarize" => (summarize(input, int(&request.parameters, "sentences", 3)?), "text/plain"),
            "keywords" => (keywords(input, int(&request.parameters, "count", 10)?), "text/plain"),
            "redact" => (redact(input), "text/plain"),
            "stats" => (stats(input), "application/json"),
            "convert" => {
                let from = match request.parameters.get("from") {
                    Some(Param::Text(from)) => Format::parse(from)?,
                    _ => Format::of(&request.input_content_type),
                };
                let to = match request.parameters.get("to") {
                    Some(Param::Text(to)) => Format::parse(to)?,
                    _ => {
                        return Err(Error::Invalid(
                            "`convert` needs the parameter `to`: markdown, html or text".into(),
                        ));
                    }
                };
                (convert(input, from, to), to.content_type())
            }
            "echo" => (input.clone(), "text/plain"),
            other => {
                return Err(Error::Invalid(format!("the builtin provider has no model {other:?}; it has {MODELS:?}")));
            }
        };
        let input_tokens = words(input).count() as u64;
        let output_tokens = words(&text).count() as u64;
        Ok(Completion { text, content_type: content_type.to_owned(), input_tokens, output_tokens })
    }
}

fn int(parameters: &BTreeMap<String, Param>, name: &str, default: usize) -> Result<usize, Error> {
    match parameters.get(name) {
        None => Ok(default),
        Some(Param::Int(n)) if (1..=1000).contains(n) => Ok(*n as usize),
        Some(other) => {
            Err(Error::Invalid(format!("parameter {name} must be a whole number from 1 to 1000, not {other:?}")))
        }
    }
}

/// Words: runs of letters and digits.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty())
}

const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our", "out",
    "has", "have", "his", "how", "its", "may", "new", "now", "old", "see", "two", "who", "did", "get", "him", "let",
    "say", "she", "too", "use", "this", "that", "with", "from", "they", "will", "would", "there", "their", "what",
    "about", "which", "when", "were", "been", "than", "then", "them", "these", "those", "into", "also", "more", "some",
    "such", "only", "over", "very", "just", "each", "other", "your", "after", "before", "while", "where",
];

fn content_words(text: &str) -> impl Iterator<Item = String> + '_ {
    words(text).map(str::to_lowercase).filter(|w| w.chars().count() >= 3 && !STOP_WORDS.contains(&w.as_str()))
}

/// Sentences: text up to `.`, `!`, `?` (or their full-width forms) followed by white space or the end, and
/// blank-line paragraph breaks.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        let next = chars.get(i + 1).map(|&(_, c)| c);
        let ends = matches!(c, '.' | '!' | '?' | '。' | '！' | '？') && next.is_none_or(char::is_whitespace);
        let paragraph = c == '\n' && next == Some('\n');
        if ends || paragraph {
            let end = at + c.len_utf8();
            let sentence = text[start..end].trim();
            if !sentence.is_empty() && words(sentence).next().is_some() {
                out.push(sentence);
            }
            start = end;
        }
    }
    let rest = text[start..].trim();
    if words(rest).next().is_some() {
        out.push(rest);
    }
    out
}

fn summarize(text: &str, count: usize) -> String {
    let all = sentences(text);
    let mut frequency: HashMap<String, usize> = HashMap::new();
    for word in content_words(text) {
        *frequency.entry(word).or_default() += 1;
    }
    let mut scored: Vec<(usize, f64)> = all
        .iter()
        .enumerate()
        .map(|(i, sentence)| {
            let counts: Vec<usize> = content_words(sentence).map(|w| frequency[&w]).collect();
            let score = if counts.is_empty() { 0.0 } else { counts.iter().sum::<usize>() as f64 / counts.len() as f64 };
            (i, score)
        })
        .collect();
    // Highest score first; the earlier sentence wins a tie, so the result is the same on every run.
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = scored.into_iter().take(count).map(|(i, _)| i).collect();
    chosen.sort_unstable();
    chosen.into_iter().map(|i| all[i]).collect::<Vec<_>>().join(" ") + "\n"
}

fn keywords(text: &str, count: usize) -> String {
    let mut frequency: BTreeMap<String, usize> = BTreeMap::new();
    for word in content_words(text) {
        *frequency.entry(word).or_default() += 1;
    }
    let mut ranked: Vec<(String, usize)> = frequency.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.into_iter().take(count).map(|(word, n)| format!("{word}\t{n}\n")).collect()
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").expect("valid"));
/// Runs of digits with single spaces or dashes between them (card numbers, phone numbers).
static DIGITS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\+?\(?\d[\d\s().-]*\d").expect("valid"));

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

fn redact(text: &str) -> String {
    let text = EMAIL.replace_all(text, "[email]");
    DIGITS
        .replace_all(&text, |found: &regex::Captures<'_>| {
            let run = &found[0];
            // A run across a line break is two numbers, not one.
            if run.contains('\n') {
                return run.to_owned();
            }
            let digits: Vec<u32> = run.chars().filter_map(|c| c.to_digit(10)).collect();
            let separated_only = run.chars().all(|c| c.is_ascii_digit() || " -".contains(c));
            if (13..=19).contains(&digits.len()) && separated_only && luhn(&digits) {
                "[card]".to_owned()
            } else if (8..=15).contains(&digits.len()) {
                "[phone]".to_owned()
            } else {
                run.to_owned()
            }
        })
        .into_owned()
}

fn stats(text: &str) -> String {
    let count = |f: fn(&char) -> bool| text.chars().filter(f).count();
    let all_words: Vec<String> = words(text).map(str::to_lowercase).collect();
    let unique: HashSet<&String> = all_words.iter().collect();
    let paragraphs = text.split("\n\n").filter(|p| !p.trim().is_empty()).count();
    serde_json::to_string_pretty(&serde_json::json!({
        "characters": text.chars().count(),
        "letters": count(|c| c.is_alphabetic()),
        "digits": count(|c| c.is_numeric()),
        "whitespace": count(|c| c.is_whitespace()),
        "punctuation": count(|c| c.is_ascii_punctuation() || (!c.is_alphanumeric() && !c.is_whitespace() && !c.is_control())),
        "words": all_words.len(),
        "unique_words": unique.len(),
        "sentences": sentences(text).len(),
        "lines": text.lines().count(),
        "paragraphs": paragraphs,
        "reading_minutes": (all_words.len() as f64 / 200.0 * 10.0).ceil() / 10.0,
    }))
    .expect("JSON serialises")
        + "\n"
}

/// A text format `convert` reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Markdown,
    Html,
}

impl Format {
    fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "text" | "plain" => Ok(Self::Text),
            "markdown" | "md" => Ok(Self::Markdown),
            "html" => Ok(Self::Html),
            other => Err(Error::Invalid(format!("unknown format {other:?}: text, markdown or html"))),
        }
    }

    fn of(content_type: &str) -> Self {
        match content_type.split(';').next().unwrap_or("").trim() {
            "text/markdown" => Self::Markdown,
            "text/html" => Self::Html,
            _ => Self::Text,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain",
            Self::Markdown => "text/markdown",
            Self::Html => "text/html",
        }
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?s)<[^>]*>").expect("valid"));
static BLOCK_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)</(p|h[1-6]|li|div|tr)>|<br\s*/?>").expect("valid"));

fn convert(text: &str, from: Format, to: Format) -> String {
    // Everything goes through paragraphs of plain text, or through Markdown's blocks to HTML.
    let plain = match from {
        Format::Html => {
            let broken = BLOCK_END.replace_all(text, "\n\n");
            let stripped = TAG.replace_all(&broken, "");
            let decoded = stripped
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&nbsp;", " ")
                .replace("&amp;", "&");
            let paragraphs: Vec<String> = decoded
                .split("\n\n")
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|p| !p.is_empty())
                .collect();
            paragraphs.join("\n\n") + "\n"
        }
        Format::Text | Format::Markdown => text.to_owned(),
    };
    match (from, to) {
        (_, Format::Text) if from != Format::Markdown => plain,
        (Format::Markdown, Format::Text) => {
            markdown_blocks(&plain).into_iter().map(|(_, line)| line).collect::<Vec<_>>().join("\n\n") + "\n"
        }
        (Format::Markdown, Format::Markdown) | (Format::Text | Format::Html, Format::Markdown) => plain,
        (Format::Markdown, Format::Html) => {
            let mut html = String::new();
            let mut in_list = false;
            for (kind, line) in markdown_blocks(&plain) {
                if kind != "li" && in_list {
                    html.push_str("</ul>\n");
                    in_list = false;
                }
                if kind == "li" && !in_list {
                    html.push_str("<ul>\n");
                    in_list = true;
                }
                html.push_str(&format!("<{kind}>{}</{kind}>\n", escape_html(&line)));
            }
            if in_list {
                html.push_str("</ul>\n");
            }
            html
        }
        (Format::Text | Format::Html, Format::Html) => plain
            .split("\n\n")
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|p| !p.is_empty())
            .map(|p| format!("<p>{}</p>\n", escape_html(&p)))
            .collect(),
        (_, Format::Text) => plain,
    }
}

/// Markdown's blocks, simply: headings (`h1`..`h6`), list items (`li`) and paragraphs (`p`), with their text.
fn markdown_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let flush = |paragraph: &mut Vec<&str>, blocks: &mut Vec<(String, String)>| {
        if !paragraph.is_empty() {
            blocks.push(("p".to_owned(), paragraph.join(" ")));
            paragraph.clear();
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            flush(&mut paragraph, &mut blocks);
            blocks.push((format!("h{hashes}"), trimmed[hashes..].trim().to_owned()));
        } else if let Some(item) = trimmed.strip_prefix("- ").or_else(|| trimmed.strip_prefix("* ")) {
            flush(&mut paragraph, &mut blocks);
            blocks.push(("li".to_owned(), item.trim().to_owned()));
        } else if trimmed.is_empty() {
            flush(&mut paragraph, &mut blocks);
        } else {
            paragraph.push(trimmed);
        }
    }
    flush(&mut paragraph, &mut blocks);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Revenue rose in the third quarter. Revenue growth came from new customers in Europe. \
        The weather was mild. Customers in Europe bought more licences, and revenue per customer rose.\n\n\
        Costs were flat.";

    async fn run(model: &str, input: &str, parameters: &[(&str, Param)]) -> Completion {
        let request = Request {
            model: model.into(),
            instructions: String::new(),
            prompt: String::new(),
            input: input.into(),
            input_content_type: "text/plain".into(),
            parameters: parameters.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        };
        Builtin.complete(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_summary_keeps_the_most_central_sentences_in_order() {
        let out = run("summarize", REPORT, &[("sentences", Param::Int(2))]).await;
        // Mean frequencies of content words: 1.75, 1.8, 1.0, 1.625, 1.0.
        assert_eq!(out.text, "Revenue rose in the third quarter. Revenue growth came from new customers in Europe.\n");
        assert_eq!(out.input_tokens, 32, "tokens are words");
        assert_eq!(run("summarize", REPORT, &[]).await.text, run("summarize", REPORT, &[]).await.text);
    }

    #[tokio::test]
    async fn keywords_are_ranked_by_frequency_then_alphabetically() {
        let out = run("keywords", REPORT, &[("count", Param::Int(3))]).await;
        // `rose` has two as well, and comes after them.
        assert_eq!(out.text, "revenue\t3\ncustomers\t2\neurope\t2\n");
    }

    #[tokio::test]
    async fn redaction_removes_emails_cards_and_phones_but_not_other_numbers() {
        let input = "Write to ann.lee@example.co.uk or call +44 20 7946 0958. Card 4111 1111 1111 1111, \
                     order 12345, year 2026, not a card 4111 1111 1111 1112.";
        let out = run("redact", input, &[]).await;
        assert_eq!(
            out.text,
            "Write to [email] or call [phone]. Card [card], order 12345, year 2026, not a card 4111 1111 1111 1112."
        );
    }

    #[tokio::test]
    async fn statistics_count_any_script() {
        let out = run("stats", "Hello wörld. Привет мир!\n\n東京 2026", &[]).await;
        let stats: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        assert_eq!(stats["words"], 6);
        assert_eq!(stats["sentences"], 3);
        assert_eq!(stats["paragraphs"], 2);
        assert_eq!(stats["digits"], 4);
        assert_eq!(out.content_type, "application/json");
    }

    #[tokio::test]
    async fn formats_convert_between_text_markdown_and_html() {
        let md = "# Title\n\nA <b>bold</b> claim\nover two lines.\n\n- one\n- two\n";
        let html =
            run("convert", md, &[("from", Param::Text("markdown".into())), ("to", Param::Text("html".into()))]).await;
        assert_eq!(
            html.text,
            "<h1>Title</h1>\n<p>A &lt;b&gt;bold&lt;/b&gt; claim over two lines.</p>\n<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"
        );
        assert_eq!(html.content_type, "text/html");
        let back =
            run("convert", &html.text, &[("from", Param::Text("html".into())), ("to", Param::Text("text".into()))])
                .await;
        assert_eq!(back.text, "Title\n\nA <b>bold</b> claim over two lines.\n\none\n\ntwo\n");
        let plain = run("convert", "a < b\n\nc", &[("to", Param::Text("html".into()))]).await;
        assert_eq!(plain.text, "<p>a &lt; b</p>\n<p>c</p>\n");
    }

    #[tokio::test]
    async fn unknown_models_and_bad_parameters_are_refused() {
        let request = |model: &str, parameters: BTreeMap<String, Param>| Request {
            model: model.into(),
            instructions: String::new(),
            prompt: String::new(),
            input: "x".into(),
            input_content_type: "text/plain".into(),
            parameters,
        };
        assert!(matches!(Builtin.complete(request("poem", BTreeMap::new())).await, Err(Error::Invalid(_))));
        let zero = BTreeMap::from([("sentences".to_owned(), Param::Int(0))]);
        assert!(matches!(Builtin.complete(request("summarize", zero)).await, Err(Error::Invalid(_))));
        assert!(matches!(Builtin.complete(request("convert", BTreeMap::new())).await, Err(Error::Invalid(_))));
    }
}
