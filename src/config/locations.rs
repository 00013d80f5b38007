//! Where each field of the configuration sits in the file, so that problems found after
//! parsing (a duplicate name, a missing upstream) can still point at a line.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A map from field paths (`routes[2].match.path`) to 1-based line and column.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    map: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

impl Locations {
    /// Indexes `text`; a file that does not parse gives an empty index.
    pub fn index(text: &str) -> Self {
        let mut map = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let at = (span.start.line(), span.start.col() + 1);
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map {
                        key: key @ None, ..
                    }) = stack.last_mut()
                    {
                        *key = Some(value.into_owned());
                        let path = current_path(&stack);
                        map.entry(path).or_insert(at);
                        continue;
                    }
                    let path = current_path(&stack);
                    map.entry(path).or_insert(at);
                    advance(&mut stack);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = current_path(&stack);
                    map.entry(path.clone()).or_insert(at);
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, index: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    advance(&mut stack);
                }
                Event::Alias(..) => advance(&mut stack),
                _ => {}
            }
        }
        Self { map }
    }

    /// The location of `path`, or of its closest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(at) = self.map.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn current_path(stack: &[Frame]) -> String {
    match stack.last() {
        None => String::new(),
        Some(Frame::Map { path, key }) => {
            let key = key.as_deref().unwrap_or("");
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        }
        Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
    }
}

fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { index, .. }) => *index += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths_and_falls_back_to_ancestors() {
        let text = "listeners:\n  - name: a\n    address: x\nroutes:\n  - name: r\n    match:\n      path: /p\n  - name: s\n    upstream: u\n";
        let loc = Locations::index(text);
        assert_eq!(loc.find("listeners[0].address"), Some((3, 5)));
        assert_eq!(loc.find("routes[0].match.path"), Some((7, 7)));
        assert_eq!(loc.find("routes[1].upstream"), Some((9, 5)));
        assert_eq!(loc.find("routes[1].nothing.deeper"), Some((8, 5)));
        assert_eq!(loc.find("routes[1]"), Some((8, 5)));
    }
}
