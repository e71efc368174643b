//! [`NoDecay`]: which parameters the trainer's AdamW leaves out of weight decay.
//!
//! Common practice since BERT (arXiv 1810.04805, whose optimizer excludes `bias` and `LayerNorm`
//! parameters) puts biases and normalisation gains in a group without weight decay: pulling a
//! gain toward 0 shrinks every activation it scales, and a bias carries no capacity worth
//! regularising. minGPT's recipe leaves embedding tables out as well: a row gets a gradient only
//! when its token occurs, while decay would shrink every row at every step.

use elide_autodiff::Param;

/// The rule that splits parameters into AdamW's two groups: those it matches get no weight
/// decay, every other parameter is decayed by [`TrainConfig::weight_decay`].
///
/// The default matches
/// - every tensor of fewer than 2 dims: norm gains (`attn_norm.weight`, `final_norm.weight`),
///   one layer's biases (`up.bias`);
/// - every bias by name, whatever its shape: a last name segment `bias`, `…_bias`, `b` or
///   `b` followed by digits — the per-expert biases `experts.b1` `[E, h]` are 2-d;
/// - the parameters named in `names`, or whose name ends in `.` + one of them: by default
///   `embed.weight`, [`TransformerLm`](crate::TransformerLm)'s token table (tied to the output
///   head or not).
///
/// For a [`TransformerLm`](crate::TransformerLm) that leaves exactly the matrices in the
/// decayed group: the attention projections, the feed-forward weights (`up.weight`,
/// `down.weight`, `gate.weight`, `experts.w1`, `experts.w2`, a sparse layer's `c1`, `c2`, `w1`,
/// `w2`), the MoE `router`, a mixture-of-depths block's `depth.router` and predictor weights,
/// and an untied `head.weight` (a test lists a model's two groups name by name). In the `--config` JSON: `"train": {"no_decay": {"vectors": true,
/// "biases": true, "names": ["embed.weight"]}}`; `{"vectors": false, "biases": false, "names":
/// []}` decays everything, as PyTorch's `AdamW` with one group.
///
/// [`TrainConfig::weight_decay`]: crate::TrainConfig::weight_decay
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoDecay {
    /// Leave out every parameter of fewer than 2 dims (norm gains, biases).
    pub vectors: bool,
    /// Leave out parameters named as biases (`bias`, `…_bias`, `b`, `b1`, `b2`, …), any shape.
    pub biases: bool,
    /// Leave out these parameters: a full name, or a suffix after a `.`.
    pub names: Vec<String>,
}

impl Default for NoDecay {
    fn default() -> NoDecay {
        NoDecay { vectors: true, biases: true, names: vec!["embed.weight".into()] }
    }
}

impl NoDecay {
    /// A rule that leaves nothing out: every parameter is decayed.
    pub fn none() -> NoDecay {
        NoDecay { vectors: false, biases: false, names: Vec::new() }
    }

    /// Whether a parameter called `name` of shape `shape` is left out of weight decay.
    pub fn matches(&self, name: &str, shape: &[usize]) -> bool {
        let last = name.rsplit('.').next().unwrap_or(name);
        let is_bias = last == "bias"
            || last.ends_with("_bias")
            || last.strip_prefix('b').is_some_and(|digits| digits.chars().all(|c| c.is_ascii_digit()));
        (self.vectors && shape.len() < 2)
            || (self.biases && is_bias)
            || self.names.iter().any(|n| name == n || name.strip_suffix(n.as_str()).is_some_and(|p| p.ends_with('.')))
    }

    /// Whether `param` is decayed (the filter [`elide_autodiff::AdamW::with_decay_filter`]
    /// takes).
    pub fn decays(&self, param: &Param) -> bool {
        !self.matches(param.name(), &param.shape())
    }
}
