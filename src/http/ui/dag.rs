//! Graphs drawn as SVG on the server: a workflow's steps (a DAG by their inputs), coloured by each step's
//! status in a job, and a document's lineage (its ancestors to the left, its descendants to the right).
//!
//! Both are laid out in columns: a node's column is its depth (a step's longest chain of inputs; a document's
//! derivations away), its row its order within the column. Each node is a `<g data-node=NAME>` whose class
//! names its status (`s-running`), so the page's script recolours it when the job changes.

use std::collections::BTreeMap;

use maud::{Markup, html};
use serde_json::Value;

const WIDTH: i64 = 168;
const HEIGHT: i64 = 46;
const GAP_X: i64 = 56;
const GAP_Y: i64 = 18;
/// Most nodes drawn; a graph beyond it is cut (and says so).
const MAX_NODES: usize = 200;

/// A node to draw: its key, column, label, second line, status class and link.
struct Node {
    key: String,
    column: i64,
    label: String,
    detail: String,
    status: String,
    link: Option<String>,
}

/// A workflow version's steps as a DAG: `statuses` (step name to status) colours them; without it they are
/// drawn plain.
pub fn workflow(steps: &[Value], statuses: &BTreeMap<String, String>) -> Markup {
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    let inputs = |step: &Value| -> Vec<String> {
        step["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["from"] == "step")
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect()
    };
    // Depth: the longest chain of inputs (steps are defined acyclic; a bound keeps a bad one finite).
    let mut depth: BTreeMap<&str, i64> = names.iter().map(|n| (*n, 0)).collect();
    for _ in 0..names.len() {
        for step in steps {
            let Some(name) = step["name"].as_str() else { continue };
            let deepest = inputs(step).iter().filter_map(|i| depth.get(i.as_str())).max().map_or(0, |d| d + 1);
            depth.insert(name, deepest.min(names.len() as i64));
        }
    }
    let nodes = steps
        .iter()
        .filter_map(|step| {
            let name = step["name"].as_str()?;
            let status = statuses.get(name).cloned().unwrap_or_else(|| "plain".into());
            let detail = if statuses.is_empty() { "step".to_owned() } else { status.clone() };
            Some(Node {
                key: name.to_owned(),
                column: depth[name],
                label: name.to_owned(),
                detail,
                status,
                link: (!statuses.is_empty()).then(|| format!("#step-{name}")),
            })
        })
        .collect();
    let edges = steps
        .iter()
        .flat_map(|step| {
            let to = step["name"].as_str().unwrap_or("").to_owned();
            inputs(step).into_iter().map(move |from| (from, to.clone()))
        })
        .collect();
    draw("Workflow steps", nodes, edges)
}

/// A document's lineage: `lineage` as `GET /documents/{id}/lineage` answers (edges `{id, of, job, step,
/// depth}`), around document `id`.
pub fn lineage(id: &str, name: &str, lineage: &Value) -> Markup {
    let mut nodes = vec![Node {
        key: id.to_owned(),
        column: 0,
        label: name.to_owned(),
        detail: "this document".into(),
        status: "current".into(),
        link: None,
    }];
    let mut edges = Vec::new();
    for (side, sign) in [("ancestors", -1), ("descendants", 1)] {
        for edge in lineage[side].as_array().into_iter().flatten() {
            let (far, near) = (edge["id"].as_str().unwrap_or(""), edge["of"].as_str().unwrap_or(""));
            if !nodes.iter().any(|n| n.key == far) {
                nodes.push(Node {
                    key: far.to_owned(),
                    column: sign * edge["depth"].as_i64().unwrap_or(1),
                    label: far.get(..8).unwrap_or(far).to_owned(),
                    detail: format!("by {}", edge["step"].as_str().unwrap_or("?")),
                    status: "plain".into(),
                    link: Some(format!("/ui/documents/{far}")),
                });
            }
            edges.push(if sign < 0 { (far.to_owned(), near.to_owned()) } else { (near.to_owned(), far.to_owned()) });
        }
    }
    draw("Lineage", nodes, edges)
}

fn draw(title: &str, mut nodes: Vec<Node>, edges: Vec<(String, String)>) -> Markup {
    let cut = nodes.len() > MAX_NODES;
    nodes.truncate(MAX_NODES);
    let least = nodes.iter().map(|n| n.column).min().unwrap_or(0);
    let mut rows: BTreeMap<i64, i64> = BTreeMap::new();
    let mut at: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for node in &nodes {
        let row = rows.entry(node.column).or_default();
        let x = (node.column - least) * (WIDTH + GAP_X);
        at.insert(node.key.clone(), (x, *row * (HEIGHT + GAP_Y)));
        *row += 1;
    }
    let width = at.values().map(|(x, _)| x + WIDTH).max().unwrap_or(WIDTH) + 2;
    let height = at.values().map(|(_, y)| y + HEIGHT).max().unwrap_or(HEIGHT) + 2;
    html! {
        figure.graph {
            svg role="img" aria-label=(title) viewBox={ "-1 -1 " (width) " " (height) } width=(width) height=(height) {
                defs {
                    marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto" {
                        path d="M0,0 L10,5 L0,10 z" {}
                    }
                }
                @for (from, to) in &edges {
                    @if let (Some((x1, y1)), Some((x2, y2))) = (at.get(from), at.get(to)) {
                        @let (sx, sy, ex, ey) = (x1 + WIDTH, y1 + HEIGHT / 2, *x2, y2 + HEIGHT / 2);
                        path.edge marker-end="url(#arrow)"
                            d={ "M" (sx) "," (sy) " C" (sx + GAP_X / 2) "," (sy) " " (ex - GAP_X / 2) "," (ey) " " (ex) "," (ey) } {}
                    }
                }
                @for node in &nodes {
                    @let (x, y) = at[&node.key];
                    @let shape = html! {
                        g class={ "node s-" (node.status) } data-node=(node.key) transform={ "translate(" (x) "," (y) ")" } {
                            rect width=(WIDTH) height=(HEIGHT) rx="6" {}
                            text x="10" y="19" { (clip(&node.label)) }
                            text.detail x="10" y="36" { (node.detail) }
                        }
                    };
                    @if let Some(link) = &node.link { a href=(link) { (shape) } } @else { (shape) }
                }
            }
            @if cut { figcaption { "Only the first " (MAX_NODES) " are drawn." } }
        }
    }
}

/// A label cut to what fits in a node.
fn clip(label: &str) -> String {
    if label.chars().count() <= 20 { label.to_owned() } else { label.chars().take(19).chain(['…']).collect() }
}
