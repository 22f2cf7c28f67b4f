//! keepalived.conf's grammar: statements of words on a line, optionally opening a `{ ... }`
//! block; `#` and `!` comments; double-quoted strings; `include GLOB` (relative to the file
//! that includes it). The result is a tree of statements, each with its file and line.
//!
//! What one import may read is bounded (`LIMITS`), each bound with an error naming the file
//! and line where it was crossed: bytes and files read in all (an include tree of tiny files
//! that include each other eight times over read 2.1 GB before), include depth, block depth
//! (the recursion of `parse_block` — 50,000 nested blocks overflowed the stack) and
//! statements. keepalived's own configurations are far inside them.

use std::{
    fmt,
    path::{Path, PathBuf},
    rc::Rc,
};

/// Where a statement was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: Rc<PathBuf>,
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One statement: `keyword args...` or `keyword args... { children }`.
#[derive(Debug, Clone)]
pub struct Node {
    pub keyword: String,
    pub args: Vec<String>,
    pub children: Option<Vec<Node>>,
    pub place: Place,
}

impl Node {
    pub fn children(&self) -> &[Node] {
        self.children.as_deref().unwrap_or(&[])
    }
}

#[derive(Debug)]
pub struct SyntaxError {
    pub place: Place,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
}

/// Splits one line into tokens, dropping comments.
fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<Token>| {
        if !word.is_empty() {
            out.push(Token::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                flush(&mut word, &mut out);
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => s.extend(chars.next()),
                        Some(c) => s.push(c),
                        None => return Err("unterminated quoted string".into()),
                    }
                }
                out.push(Token::Word(s));
            }
            '#' | '!' if word.is_empty() => break,
            '{' => {
                flush(&mut word, &mut out);
                out.push(Token::Open);
            }
            '}' => {
                flush(&mut word, &mut out);
                out.push(Token::Close);
            }
            c if c.is_whitespace() => flush(&mut word, &mut out),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    Ok(out)
}

/// The bounds of one import.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub bytes: u64,
    pub files: usize,
    pub include_depth: usize,
    pub block_depth: usize,
    pub statements: usize,
}

pub const LIMITS: Limits = Limits {
    bytes: 16 << 20,
    files: 1_000,
    include_depth: 8,
    block_depth: 32,
    statements: 200_000,
};

/// Reads `path` and everything it includes, within `LIMITS`.
pub fn parse_file(path: &Path) -> Result<Vec<Node>, SyntaxError> {
    parse_file_within(path, LIMITS)
}

pub fn parse_file_within(path: &Path, limits: Limits) -> Result<Vec<Node>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut read = Read {
        limits,
        bytes: 0,
        files: 0,
    };
    read_tokens(path, &mut tokens, 0, &mut read, None)?;
    let mut pos = 0;
    let mut count = Count {
        limits,
        statements: 0,
    };
    let nodes = parse_block(&tokens, &mut pos, None, 0, &mut count)?;
    Ok(nodes)
}

/// What has been read so far.
struct Read {
    limits: Limits,
    bytes: u64,
    files: usize,
}

/// What has been parsed so far.
struct Count {
    limits: Limits,
    statements: usize,
}

fn read_tokens(
    path: &Path,
    out: &mut Vec<(Token, Place)>,
    depth: usize,
    read: &mut Read,
    from: Option<&Place>,
) -> Result<(), SyntaxError> {
    let file = Rc::new(path.to_path_buf());
    let at = |message: String| SyntaxError {
        place: from.cloned().unwrap_or(Place {
            file: file.clone(),
            line: 0,
        }),
        message,
    };
    read.files += 1;
    if read.files > read.limits.files {
        return Err(at(format!(
            "more than {} files read (includes): refused",
            read.limits.files
        )));
    }
    // The size first: a huge file is refused before it is read.
    let size = std::fs::metadata(path)
        .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?
        .len();
    read.bytes += size;
    if read.bytes > read.limits.bytes {
        return Err(at(format!(
            "more than {} bytes read in all (with {}): refused",
            read.limits.bytes,
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| SyntaxError {
        place: Place {
            file: file.clone(),
            line: 0,
        },
        message: format!("cannot read: {e}"),
    })?;
    for (i, line) in text.lines().enumerate() {
        let place = Place {
            file: file.clone(),
            line: i + 1,
        };
        let tokens = tokenize(line).map_err(|message| SyntaxError {
            place: place.clone(),
            message,
        })?;
        if let Some(Token::Word(w)) = tokens.first()
            && w == "include"
        {
            if depth >= read.limits.include_depth {
                return Err(SyntaxError {
                    place,
                    message: "includes nested too deep (a loop?)".into(),
                });
            }
            let [_, Token::Word(pattern)] = tokens.as_slice() else {
                return Err(SyntaxError {
                    place,
                    message: "`include` takes one file or glob".into(),
                });
            };
            let base = path.parent().unwrap_or(Path::new("."));
            let full = if Path::new(pattern).is_absolute() {
                PathBuf::from(pattern)
            } else {
                base.join(pattern)
            };
            let paths = glob::glob(&full.to_string_lossy()).map_err(|e| SyntaxError {
                place: place.clone(),
                message: format!("bad include pattern: {e}"),
            })?;
            let mut matched: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
            matched.sort();
            if matched.is_empty() {
                return Err(SyntaxError {
                    place,
                    message: format!("include {pattern:?} matches no file"),
                });
            }
            for p in matched {
                read_tokens(&p, out, depth + 1, read, Some(&place))?;
            }
            continue;
        }
        out.extend(tokens.into_iter().map(|t| (t, place.clone())));
    }
    Ok(())
}

/// Parses statements until the closing brace of `open` (or the end of input at top level).
/// A statement ends at the end of its line, or with its block. `depth`: blocks open around
/// this one (bounded: the recursion is).
fn parse_block(
    tokens: &[(Token, Place)],
    pos: &mut usize,
    open: Option<&Place>,
    depth: usize,
    count: &mut Count,
) -> Result<Vec<Node>, SyntaxError> {
    if let Some(p) = open
        && depth > count.limits.block_depth
    {
        return Err(SyntaxError {
            place: p.clone(),
            message: format!(
                "blocks nested more than {} deep: refused",
                count.limits.block_depth
            ),
        });
    }
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let (tok, place) = &tokens[*pos];
        match tok {
            Token::Close => {
                if open.is_none() {
                    return Err(SyntaxError {
                        place: place.clone(),
                        message: "`}` without a block to close".into(),
                    });
                }
                *pos += 1;
                return Ok(nodes);
            }
            Token::Open => {
                return Err(SyntaxError {
                    place: place.clone(),
                    message: "`{` without a keyword".into(),
                });
            }
            Token::Word(keyword) => {
                count.statements += 1;
                if count.statements > count.limits.statements {
                    return Err(SyntaxError {
                        place: place.clone(),
                        message: format!(
                            "more than {} statements: refused",
                            count.limits.statements
                        ),
                    });
                }
                let mut node = Node {
                    keyword: keyword.clone(),
                    args: vec![],
                    children: None,
                    place: place.clone(),
                };
                *pos += 1;
                while let Some((t, p)) = tokens.get(*pos) {
                    if p.line != place.line || p.file != place.file {
                        // A block may open on the next line (`virtual_server ... \n {`).
                        if *t == Token::Open && node.children.is_none() && p.file == place.file {
                            *pos += 1;
                            node.children =
                                Some(parse_block(tokens, pos, Some(place), depth + 1, count)?);
                        }
                        break;
                    }
                    match t {
                        Token::Word(w) => {
                            node.args.push(w.clone());
                            *pos += 1;
                        }
                        Token::Open => {
                            *pos += 1;
                            node.children =
                                Some(parse_block(tokens, pos, Some(place), depth + 1, count)?);
                            break;
                        }
                        Token::Close => break,
                    }
                }
                nodes.push(node);
            }
        }
    }
    match open {
        Some(p) => Err(SyntaxError {
            place: p.clone(),
            message: "this block is never closed".into(),
        }),
        None => Ok(nodes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Vec<Node>, SyntaxError> {
        let dir =
            std::env::temp_dir().join(format!("kaparse-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("keepalived.conf");
        std::fs::write(&p, text).unwrap();
        let r = parse_file(&p);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn blocks_comments_quotes() {
        let nodes = parse_text(
            "! Configuration File\nglobal_defs {\n  router_id LVS1 # trailing\n  notification_email {\n a@b\n }\n}\n\
             vrrp_instance VI_1 { state MASTER }\nvrrp_script chk {\n script \"/bin/check --x 1\"\n}\n",
        )
        .unwrap();
        assert_eq!(nodes.len(), 3);
        let g = &nodes[0];
        assert_eq!(g.keyword, "global_defs");
        assert_eq!(g.children()[0].args, vec!["LVS1"]);
        assert_eq!(g.children()[1].children()[0].keyword, "a@b");
        assert_eq!(nodes[1].children()[0].args, vec!["MASTER"]);
        assert_eq!(nodes[2].children()[0].args, vec!["/bin/check --x 1"]);
        assert_eq!(nodes[2].place.line, 9);
    }

    #[test]
    fn unbalanced_braces_are_errors_with_lines() {
        let e = parse_text("global_defs {\n router_id x\n").unwrap_err();
        assert!(
            e.to_string().ends_with(":1: this block is never closed"),
            "{e}"
        );
        let e = parse_text("a\n}\n").unwrap_err();
        assert!(e.to_string().contains(":2: `}` without"), "{e}");
    }

    #[test]
    fn deep_wide_and_big_inputs_stop_at_their_limits_with_the_place() {
        // 50,000 nested blocks: an error at the block past the limit, no stack overflow.
        let deep = "a {\n".repeat(50_000) + &"}\n".repeat(50_000);
        let e = parse_text(&deep).unwrap_err().to_string();
        assert!(e.contains(":33: blocks nested more than 32 deep"), "{e}");
        // Includes that fan out: each file includes the next level 8 times.
        let dir = std::env::temp_dir().join(format!("kafan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for level in 0..8 {
            let body: String = (0..8)
                .map(|_| format!("include l{}.conf\n", level + 1))
                .collect();
            std::fs::write(dir.join(format!("l{level}.conf")), body).unwrap();
        }
        std::fs::write(dir.join("l8.conf"), "global_defs {\n}\n").unwrap();
        let t = std::time::Instant::now();
        let e = parse_file(&dir.join("l0.conf")).unwrap_err().to_string();
        assert!(e.contains("more than 1000 files read"), "{e}");
        assert!(
            e.contains("l7.conf:"),
            "names the including file and line: {e}"
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // Bytes and statements, with small limits.
        std::fs::write(dir.join("big.conf"), "x y z\n".repeat(1_000)).unwrap();
        let small = Limits {
            bytes: 1_000,
            ..LIMITS
        };
        let e = parse_file_within(&dir.join("big.conf"), small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 1000 bytes"), "{e}");
        let few = Limits {
            statements: 10,
            ..LIMITS
        };
        let e = parse_file_within(&dir.join("big.conf"), few)
            .unwrap_err()
            .to_string();
        assert!(e.contains("big.conf:11: more than 10 statements"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn includes_follow_globs_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("kainc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(
            dir.join("main.conf"),
            "global_defs {\n router_id A\n}\ninclude conf.d/*.conf\n",
        )
        .unwrap();
        std::fs::write(dir.join("conf.d/b.conf"), "vrrp_instance B {\n}\n").unwrap();
        std::fs::write(dir.join("conf.d/a.conf"), "vrrp_instance A {\n}\n").unwrap();
        let nodes = parse_file(&dir.join("main.conf")).unwrap();
        let names: Vec<&str> = nodes.iter().skip(1).map(|n| n.args[0].as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        assert!(nodes[1].place.file.ends_with("conf.d/a.conf"));
        std::fs::write(dir.join("main.conf"), "include nothing/*.conf\n").unwrap();
        assert!(
            parse_file(&dir.join("main.conf"))
                .unwrap_err()
                .to_string()
                .contains("matches no file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
