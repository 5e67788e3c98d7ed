//! The price table: what each provider's model costs per million tokens read and written, in US dollars, as
//! the node's options give it (`--price PROVIDER/MODEL=INPUT:OUTPUT`, repeated or comma separated; `*` for
//! every model of a provider; in the config file `price = ["openai/gpt-4o-mini=0.15:0.6"]` under
//! `[providers]`). A call's cost is its tokens times the prices, kept in billionths of a dollar so that sums
//! are exact ([`Prices::cost`]); a model without a price costs 0.

use std::collections::BTreeMap;

/// One entry of the table, parsed from `PROVIDER/MODEL=INPUT:OUTPUT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// The provider's name (`openai`, `anthropic`, `builtin`).
    pub provider: String,
    /// The model, or `*` for every model of the provider without a price of its own.
    pub model: String,
    /// US dollars per million tokens read.
    pub input_per_million: f64,
    /// US dollars per million tokens written.
    pub output_per_million: f64,
}

/// The most a price may be, in US dollars per million tokens: a typo of a few zeros is refused.
pub const MAX_PRICE: f64 = 10_000.0;

/// Parses `PROVIDER/MODEL=INPUT:OUTPUT` (for clap).
pub fn parse(text: &str) -> Result<Price, String> {
    let shape = || format!("{text:?} is not PROVIDER/MODEL=INPUT:OUTPUT (US dollars per million tokens)");
    let (name, prices) = text.trim().split_once('=').ok_or_else(shape)?;
    let (provider, model) = name.split_once('/').ok_or_else(shape)?;
    let (input, output) = prices.split_once(':').ok_or_else(shape)?;
    let amount = |text: &str| -> Result<f64, String> {
        let value: f64 = text.trim().parse().map_err(|_| shape())?;
        if !value.is_finite() || !(0.0..=MAX_PRICE).contains(&value) {
            return Err(format!("{text:?} in {name}: a price is between 0 and {MAX_PRICE} dollars per million tokens"));
        }
        Ok(value)
    };
    let valid = |s: &str| !s.is_empty() && s.len() <= 200 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid(provider) || !valid(model) {
        return Err(shape());
    }
    Ok(Price {
        provider: provider.to_owned(),
        model: model.to_owned(),
        input_per_million: amount(input)?,
        output_per_million: amount(output)?,
    })
}

/// The table, by provider then model; see the module doc.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices(BTreeMap<String, BTreeMap<String, (f64, f64)>>);

impl Prices {
    /// The table of `prices`; a later entry for the same provider and model wins.
    pub fn new(prices: &[Price]) -> Self {
        let mut table = Self::default();
        for p in prices {
            let models = table.0.entry(p.provider.clone()).or_default();
            models.insert(p.model.clone(), (p.input_per_million, p.output_per_million));
        }
        table
    }

    /// The cost of a call to `provider`'s `model` that read `input` and wrote `output` tokens, in billionths
    /// of a US dollar (rounded to the nearest); 0 without a price.
    pub fn cost(&self, provider: &str, model: &str, input: u64, output: u64) -> u64 {
        let found = self.0.get(provider).and_then(|models| models.get(model).or_else(|| models.get("*")));
        let Some((input_price, output_price)) = found else { return 0 };
        // Dollars per million tokens are thousandths of a nano-dollar per token.
        let nanos = input as f64 * input_price * 1000.0 + output as f64 * output_price * 1000.0;
        nanos.round().min(u64::MAX as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_costs_its_tokens_times_the_prices_and_a_model_without_one_nothing() {
        let prices = Prices::new(&[
            parse("openai/gpt-4o-mini=0.15:0.6").unwrap(),
            parse("anthropic/*=3:15").unwrap(),
            parse("anthropic/claude-haiku=0.8:4").unwrap(),
        ]);
        // 1000 tokens at $0.15 per million is $0.00015: 150,000 nano-dollars; 200 at $0.60, 120,000.
        assert_eq!(prices.cost("openai", "gpt-4o-mini", 1000, 200), 270_000);
        assert_eq!(prices.cost("anthropic", "claude-opus", 1_000_000, 0), 3_000_000_000);
        assert_eq!(prices.cost("anthropic", "claude-haiku", 0, 1_000_000), 4_000_000_000);
        assert_eq!(prices.cost("openai", "gpt-4o", 1000, 200), 0);
        assert_eq!(prices.cost("builtin", "extractive", 1000, 200), 0);
        let mut row = serde_json::json!({"cost_nanos": 270_000});
        weft_projections::with_cost_usd(&mut row);
        assert_eq!(row["cost_usd"], 0.00027);
    }

    #[test]
    fn malformed_prices_are_refused_with_the_shape_expected() {
        for bad in [
            "",
            "openai",
            "openai=1:2",
            "openai/gpt",
            "openai/gpt=1",
            "openai/gpt=a:b",
            "/gpt=1:2",
            "openai/=1:2",
            "openai/gpt=-1:2",
            "openai/gpt=1:NaN",
            "openai/gpt=1:inf",
            "openai/gpt=1e9:1",
            "open ai/gpt=1:2",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(" builtin/stats=0:0 ").unwrap().model, "stats");
    }
}
