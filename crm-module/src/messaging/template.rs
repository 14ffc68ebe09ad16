//! Message templates (subject, preheader, bodies, footers) rendered with
//! [minijinja].
//!
//! Templates are deliberately small: placeholders (`{{ firstname }}`), a few
//! string filters (`{{ firstname | default("there") | title }}`), literals,
//! comparisons and `{% if %}` / `{% elif %}` / `{% else %}` / `{% endif %}`
//! blocks. Everything else — `include`, `import`, `extends`, `for`, `set`,
//! macros, attribute or item access, function calls, arithmetic, `safe` —
//! is refused by [`validate`] when the template is saved, and the render
//! environment has no loader, no globals and only the allowed filters and
//! tests, so even an unvalidated template cannot reach further.
//!
//! Errors ([`TemplateError`]) name the field, the placeholder and the 1-based
//! line and column inside that field; they never contain contact data (values
//! are not part of any message).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

/// Placeholders every template may use.
pub const STANDARD_PLACEHOLDERS: &[&str] = &[
    "firstname",
    "lastname",
    "practice",
    "owner",
    "unsubscribe_link",
];

/// Filters a template may apply to a value (`{{ firstname | title }}`).
pub const ALLOWED_FILTERS: &[&str] = &[
    "capitalize",
    "d",
    "default",
    "lower",
    "replace",
    "title",
    "trim",
    "upper",
];

/// Tests a template may use in a condition (`{% if firstname is defined %}`).
pub const ALLOWED_TESTS: &[&str] = &["defined", "undefined", "none"];

/// Block tags a template may use (`{% if firstname %}…{% else %}…{% endif %}`).
pub const ALLOWED_TAGS: &[&str] = &["if", "elif", "else", "endif"];

/// Fuel budget of one render: bounds rendering time and memory (roughly one
/// unit per instruction and per 64 bytes of data, so about 12 MB of output).
pub const RENDER_FUEL: u64 = 200_000;

/// Most words, values and symbols in one tag (`{{ }}` or `{% %}`). The
/// engine parses and compiles a chain of filters, `not`s or operators by
/// recursion, one level a link: 20,000 of them in one tag overflowed the
/// stack of the thread saving the template, which aborts the host's
/// process. A real tag has a few dozen.
pub const MAX_TAG_TOKENS: usize = 256;

/// Keywords of the expression language that are not variables.
const KEYWORDS: &[&str] = &[
    "and", "or", "not", "is", "in", "if", "else", "true", "false", "none", "True", "False", "None",
];

/// A template error: which field, which placeholder, where (1-based line and
/// column in that field; `0` when the engine could not tell).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, schemars::JsonSchema)]
#[error("{field}: {message} at line {line}, column {column}")]
pub struct TemplateError {
    /// The template field, e.g. `subject` or `html_body`.
    pub field: String,
    /// What is wrong, e.g. `unknown placeholder fistname (did you mean firstname?)`.
    pub message: String,
    /// The placeholder concerned, when the error is about one.
    pub placeholder: Option<String>,
    /// 1-based line in the field (0 when unknown).
    pub line: usize,
    /// 1-based column (in characters) in that line (0 when unknown).
    pub column: usize,
}

impl TemplateError {
    fn at(field: &str, source: &str, offset: usize, message: String) -> Self {
        let (line, column) = line_column(source, offset);
        Self {
            field: field.to_owned(),
            message,
            placeholder: None,
            line,
            column,
        }
    }

    fn with_placeholder(mut self, name: &str) -> Self {
        self.placeholder = Some(name.to_owned());
        self
    }
}

/// Validates one template field at save time.
///
/// Refuses syntax errors, and any variable that is neither one of
/// [`STANDARD_PLACEHOLDERS`] nor one of `custom` (custom contact property
/// names): an unknown or misspelt placeholder is reported with its name and
/// position, e.g. `{{ fistname }}` → placeholder `fistname`, line 1, column 4,
/// message `unknown placeholder fistname (did you mean firstname?)`.
///
/// Only plain variables, literals, comparisons, the [`ALLOWED_FILTERS`], the
/// [`ALLOWED_TESTS`] and the [`ALLOWED_TAGS`] are accepted: no `include`,
/// `import`, `extends`, no attribute or item access, no function calls.
/// Finally the template is rendered twice with sample values (every
/// placeholder set, then none set) so that runtime errors such as a filter
/// given the wrong arguments are refused at save time as well.
/// `field` names the field in the error, e.g. `"subject"`.
///
/// # Errors
///
/// The first problem found, as a [`TemplateError`].
pub fn validate(field: &str, source: &str, custom: &[String]) -> Result<(), TemplateError> {
    // Refused constructs first (whatever the engine's feature set parses),
    // then the engine's syntax check, which also reports unclosed tags.
    let scanned = scan(source);
    if let Err(refusal) = &scanned
        && !refusal.unclosed
    {
        return Err(TemplateError::at(
            field,
            source,
            refusal.offset,
            refusal.message.clone(),
        ));
    }
    let env = environment(false);
    let template = env
        .template_from_str(source)
        .map_err(|err| map_engine_error(field, source, &err, true))?;
    let variables = scanned.map_err(|r| TemplateError::at(field, source, r.offset, r.message))?;

    let allowed =
        |name: &str| STANDARD_PLACEHOLDERS.contains(&name) || custom.iter().any(|c| c == name);
    for (name, offset) in &variables {
        if !allowed(name) {
            return Err(unknown_placeholder(field, source, name, *offset, custom));
        }
    }

    // Cross-check with the engine's own analysis, in case the scanner missed
    // a reference: anything the engine would look up must be allowed too.
    let mut undeclared: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    undeclared.sort();
    if let Some(name) = undeclared.iter().find(|name| !allowed(name)) {
        let offset = find_identifier(source, name);
        let mut err = unknown_placeholder(field, source, name, offset.unwrap_or(0), custom);
        if offset.is_none() {
            err.line = 0;
            err.column = 0;
        }
        return Err(err);
    }

    // Trial renders catch what only shows at runtime (a filter given the
    // wrong arguments): once with every placeholder set, once with none.
    let sample: BTreeMap<String, String> = STANDARD_PLACEHOLDERS
        .iter()
        .copied()
        .chain(custom.iter().map(String::as_str))
        .map(|name| (name.to_owned(), "sample".to_owned()))
        .collect();
    for values in [sample, BTreeMap::new()] {
        template
            .render(Value::from(values))
            .map_err(|err| map_engine_error(field, source, &err, false))?;
    }
    Ok(())
}

/// Renders a field.
///
/// `html` = true auto-escapes every value, so contact data can never inject
/// markup; in text mode values are inserted verbatim. Values come from
/// `vars` (placeholder name → string). Undefined variables render as empty
/// strings (validation happened at save). Rendering is bounded by
/// [`RENDER_FUEL`]; rendering errors map to [`TemplateError`] (without any
/// value in the message).
///
/// # Errors
///
/// Syntax errors and rendering errors (unknown filter, wrong filter
/// arguments, out of fuel) as a [`TemplateError`].
pub fn render(
    field: &str,
    source: &str,
    vars: &BTreeMap<String, String>,
    html: bool,
) -> Result<String, TemplateError> {
    render_value(field, source, &Value::from(vars.clone()), html)
}

/// Like [`render`], with the values already converted (the fields of one
/// message share one conversion).
///
/// Compiled templates are kept per thread, keyed by their source (each in
/// its own environment, under the name a template compiled from a string
/// gets, so errors read the same): a message step renders the same few
/// templates for every contact. At most [`COMPILED_PER_THREAD`] are kept.
///
/// # Errors
///
/// As [`render`].
pub fn render_value(
    field: &str,
    source: &str,
    vars: &Value,
    html: bool,
) -> Result<String, TemplateError> {
    thread_local! {
        static COMPILED: RefCell<[HashMap<String, Environment<'static>>; 2]> =
            RefCell::new([HashMap::new(), HashMap::new()]);
    }
    let render = |env: &Environment<'static>| {
        env.get_template(STRING_TEMPLATE)
            .and_then(|t| t.render(vars.clone()))
            .map_err(|err| map_engine_error(field, source, &err, false))
    };
    COMPILED.with_borrow_mut(|compiled| {
        let cache = &mut compiled[usize::from(html)];
        // One lookup (one hash of the source) for a template seen before.
        if let Some(env) = cache.get(source) {
            return render(env);
        }
        let mut env = environment(html);
        env.add_template_owned(STRING_TEMPLATE, source.to_owned())
            .map_err(|err| map_engine_error(field, source, &err, true))?;
        if cache.len() >= COMPILED_PER_THREAD {
            cache.clear();
        }
        let rendered = render(&env);
        cache.insert(source.to_owned(), env);
        rendered
    })
}

/// The name minijinja gives a template compiled from a string.
const STRING_TEMPLATE: &str = "<string>";

/// Compiled templates kept per thread by [`render_value`].
pub const COMPILED_PER_THREAD: usize = 256;

/// The restrictive environment: no loader, no globals, no functions, only the
/// allowed filters and tests, chainable undefined values, a fuel budget and
/// the default recursion limit.
fn environment<'s>(html: bool) -> Environment<'s> {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_fuel(Some(RENDER_FUEL));
    // Debug mode makes the engine keep spans for runtime errors; the debug
    // information itself (which can include values) is never displayed.
    env.set_debug(true);
    if html {
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        // A value that would run as a script where it is a link's target
        // (`href="{{website}}"` with "javascript:…" typed into the field)
        // is made inert, in the email and in the preview the EHR shows.
        env.set_formatter(|out, state, value| {
            if value.as_str().is_some_and(is_script_url) {
                std::fmt::Write::write_str(out, "unsafe:").map_err(minijinja::Error::from)?;
            }
            minijinja::escape_formatter(out, state, value)
        });
    }
    env.add_filter("capitalize", minijinja::filters::capitalize);
    env.add_filter("default", minijinja::filters::default);
    env.add_filter("d", minijinja::filters::default);
    env.add_filter("lower", minijinja::filters::lower);
    env.add_filter("replace", minijinja::filters::replace);
    env.add_filter("title", minijinja::filters::title);
    env.add_filter("trim", minijinja::filters::trim);
    env.add_filter("upper", minijinja::filters::upper);
    env.add_test("defined", minijinja::tests::is_defined);
    env.add_test("undefined", minijinja::tests::is_undefined);
    env.add_test("none", minijinja::tests::is_none);
    env
}

/// Whether `text` is a URL a browser would run as a script: `javascript:`,
/// `vbscript:` or an HTML `data:` URL, read as browsers read a scheme
/// (case-insensitive, leading blanks and control characters skipped, tabs
/// and line breaks inside it ignored).
fn is_script_url(text: &str) -> bool {
    let scheme: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && !c.is_control())
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    ["javascript:", "vbscript:", "data:text/html"]
        .iter()
        .any(|s| scheme.starts_with(s))
}

/// Maps an engine error to a [`TemplateError`]. Details are kept for syntax
/// errors (they quote the template, never values) and for unknown
/// filters/tests; for other runtime errors only the kind is reported.
fn map_engine_error(
    field: &str,
    source: &str,
    err: &minijinja::Error,
    compile: bool,
) -> TemplateError {
    let kind = err.kind();
    let keep_detail = compile
        || matches!(
            kind,
            ErrorKind::SyntaxError | ErrorKind::UnknownFilter | ErrorKind::UnknownTest
        );
    let message = match (keep_detail, err.detail()) {
        (true, Some(detail)) => format!("{kind}: {detail}"),
        _ => kind.to_string(),
    };
    let (line, column) = match err.range() {
        Some(range) if range.start <= source.len() => line_column(source, range.start),
        _ => (err.line().unwrap_or(0), 0),
    };
    TemplateError {
        field: field.to_owned(),
        message,
        placeholder: None,
        line,
        column,
    }
}

fn unknown_placeholder(
    field: &str,
    source: &str,
    name: &str,
    offset: usize,
    custom: &[String],
) -> TemplateError {
    let message = match suggest(name, custom) {
        Some(best) => format!("unknown placeholder {name} (did you mean {best}?)"),
        None => format!("unknown placeholder {name}"),
    };
    TemplateError::at(field, source, offset, message).with_placeholder(name)
}

/// The closest allowed placeholder within a small edit distance.
fn suggest<'a>(name: &str, custom: &'a [String]) -> Option<&'a str> {
    let lowered = name.to_lowercase();
    let max = (name.chars().count() / 3).clamp(1, 3);
    STANDARD_PLACEHOLDERS
        .iter()
        .copied()
        .chain(custom.iter().map(String::as_str))
        .map(|candidate| {
            (
                edit_distance(&lowered, &candidate.to_lowercase()),
                candidate,
            )
        })
        .filter(|(distance, _)| *distance <= max)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, cell) in d.iter_mut().step_by(width).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Byte offset of the first occurrence of `name` as a whole identifier.
fn find_identifier(source: &str, name: &str) -> Option<usize> {
    source.match_indices(name).map(|(i, _)| i).find(|&i| {
        let before = source[..i].chars().next_back();
        let after = source[i + name.len()..].chars().next();
        !before.is_some_and(is_ident_continue) && !after.is_some_and(is_ident_continue)
    })
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Why the scanner refused a construct, and where.
struct Refusal {
    offset: usize,
    message: String,
    /// A tag or comment without its end: left to the engine's syntax check.
    unclosed: bool,
}

impl Refusal {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
            unclosed: false,
        }
    }

    fn unclosed(offset: usize, message: &str) -> Self {
        Self {
            unclosed: true,
            ..Self::new(offset, message)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Ident,
    Str,
    Number,
    Op,
}

#[derive(Debug, Clone, Copy)]
struct Token<'s> {
    kind: TokenKind,
    text: &'s str,
    offset: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TagKind {
    Variable,
    Block,
}

/// Scans the source for `{{ … }}`, `{% … %}` and `{# … #}`, refuses what is
/// not allowed and returns every variable reference with its byte offset.
fn scan(source: &str) -> Result<Vec<(String, usize)>, Refusal> {
    let mut variables = Vec::new();
    let mut pos = 0;
    while let Some(found) = source[pos..].find('{') {
        let start = pos + found;
        let rest = &source[start..];
        let kind = if rest.starts_with("{{") {
            TagKind::Variable
        } else if rest.starts_with("{%") {
            TagKind::Block
        } else if rest.starts_with("{#") {
            let end = rest
                .find("#}")
                .ok_or_else(|| Refusal::unclosed(start, "unclosed comment"))?;
            pos = start + end + 2;
            continue;
        } else {
            pos = start + 1;
            continue;
        };
        let mut body = start + 2;
        if matches!(source.as_bytes().get(body), Some(b'-' | b'+')) {
            body += 1;
        }
        let (tokens, end) =
            tokenize(source, body, kind).ok_or_else(|| Refusal::unclosed(start, "unclosed tag"))?;
        if tokens.len() > MAX_TAG_TOKENS {
            return Err(Refusal::new(
                start,
                format!(
                    "tag too long: at most {MAX_TAG_TOKENS} words, values and symbols in one tag"
                ),
            ));
        }
        match kind {
            TagKind::Variable => check_expression(&tokens, &mut variables)?,
            TagKind::Block => check_block(start, &tokens, &mut variables)?,
        }
        pos = end;
    }
    Ok(variables)
}

/// Splits a tag body into tokens; returns them and the offset just past the
/// closing delimiter, or `None` when the tag is not closed.
fn tokenize(source: &str, mut pos: usize, kind: TagKind) -> Option<(Vec<Token<'_>>, usize)> {
    let close = match kind {
        TagKind::Variable => "}}",
        TagKind::Block => "%}",
    };
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    loop {
        let rest = &source[pos..];
        let skipped = rest.len() - rest.trim_start().len();
        pos += skipped;
        let rest = &source[pos..];
        let c = rest.chars().next()?;
        if depth == 0 {
            if rest.starts_with(close) {
                return Some((tokens, pos + close.len()));
            }
            if (c == '-' || c == '+') && rest[1..].starts_with(close) {
                return Some((tokens, pos + 1 + close.len()));
            }
        }
        let len = if c == '"' || c == '\'' {
            let mut escaped = false;
            let end = rest[1..].char_indices().find_map(|(i, ch)| {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == c {
                    return Some(i + 2);
                }
                None
            })?;
            tokens.push(Token {
                kind: TokenKind::Str,
                text: &rest[..end],
                offset: pos,
            });
            end
        } else if c.is_ascii_digit() {
            let end = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '.'))
                .unwrap_or(rest.len());
            tokens.push(Token {
                kind: TokenKind::Number,
                text: &rest[..end],
                offset: pos,
            });
            end
        } else if is_ident_start(c) {
            let end = rest
                .find(|ch: char| !is_ident_continue(ch))
                .unwrap_or(rest.len());
            tokens.push(Token {
                kind: TokenKind::Ident,
                text: &rest[..end],
                offset: pos,
            });
            end
        } else {
            let two = rest
                .get(..2)
                .filter(|t| matches!(*t, "==" | "!=" | "<=" | ">=" | "//" | "**"));
            let len = two.map_or(c.len_utf8(), str::len);
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            tokens.push(Token {
                kind: TokenKind::Op,
                text: &rest[..len],
                offset: pos,
            });
            len
        };
        pos += len;
    }
}

fn check_block(
    start: usize,
    tokens: &[Token<'_>],
    variables: &mut Vec<(String, usize)>,
) -> Result<(), Refusal> {
    let Some(tag) = tokens.first() else {
        return Err(Refusal::new(start, "empty block tag"));
    };
    if tag.kind != TokenKind::Ident || !ALLOWED_TAGS.contains(&tag.text) {
        return Err(Refusal::new(
            tag.offset,
            format!(
                "{} blocks are not allowed (only if, elif, else and endif)",
                tag.text
            ),
        ));
    }
    match tag.text {
        "if" | "elif" => check_expression(&tokens[1..], variables),
        _ => match tokens.get(1) {
            Some(extra) => Err(Refusal::new(
                extra.offset,
                format!("unexpected {} after {}", extra.text, tag.text),
            )),
            None => Ok(()),
        },
    }
}

/// What an open parenthesis belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Paren {
    Group,
    Call,
}

fn check_expression(
    tokens: &[Token<'_>],
    variables: &mut Vec<(String, usize)>,
) -> Result<(), Refusal> {
    let mut parens: Vec<Paren> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        let prev = i.checked_sub(1).map(|p| tokens[p].text);
        let next = tokens.get(i + 1).map(|t| t.text);
        match token.kind {
            TokenKind::Str | TokenKind::Number => {}
            TokenKind::Ident => {
                let after_is = prev == Some("is")
                    || (prev == Some("not") && i >= 2 && tokens[i - 2].text == "is");
                if prev == Some("|") {
                    if !ALLOWED_FILTERS.contains(&token.text) {
                        return Err(Refusal::new(
                            token.offset,
                            format!("filter {} is not allowed", token.text),
                        ));
                    }
                    if next == Some("(") {
                        parens.push(Paren::Call);
                        i += 1;
                    }
                } else if after_is && token.text != "not" {
                    if !ALLOWED_TESTS.contains(&token.text) {
                        return Err(Refusal::new(
                            token.offset,
                            format!("test {} is not allowed", token.text),
                        ));
                    }
                    if next == Some("(") {
                        parens.push(Paren::Call);
                        i += 1;
                    }
                } else if KEYWORDS.contains(&token.text) {
                } else if parens.last() == Some(&Paren::Call) && next == Some("=") {
                    // keyword argument name of a filter or test
                } else {
                    match next {
                        Some("(") => {
                            return Err(Refusal::new(
                                token.offset,
                                format!("function calls are not allowed ({})", token.text),
                            ));
                        }
                        Some("." | "[") => {
                            return Err(Refusal::new(
                                token.offset,
                                format!("attribute access is not allowed ({})", token.text),
                            ));
                        }
                        _ => variables.push((token.text.to_owned(), token.offset)),
                    }
                }
            }
            TokenKind::Op => match token.text {
                "(" => parens.push(Paren::Group),
                ")" => {
                    parens.pop();
                }
                "|" | "," | "~" | "==" | "!=" | "<" | "<=" | ">" | ">=" | "=" => {}
                "[" if i == 0
                    || !matches!(tokens[i - 1].kind, TokenKind::Str | TokenKind::Number)
                        && tokens[i - 1].text != ")" =>
                {
                    return Err(Refusal::new(token.offset, "lists and maps are not allowed"));
                }
                "." | "[" => {
                    return Err(Refusal::new(
                        token.offset,
                        "attribute access is not allowed",
                    ));
                }
                "{" | "]" | "}" => {
                    return Err(Refusal::new(token.offset, "lists and maps are not allowed"));
                }
                "+" | "-" | "*" | "/" | "//" | "%" | "**" => {
                    return Err(Refusal::new(token.offset, "arithmetic is not allowed"));
                }
                other => {
                    return Err(Refusal::new(token.offset, format!("unexpected {other}")));
                }
            },
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn accepts_standard_and_custom_placeholders() {
        let custom = vec!["date_of_birth".to_owned(), "insurance".to_owned()];
        let src = "Hello {{ firstname }} {{lastname}},\n\
                   {{ practice | upper }} / {{ owner|default('the team') | title }}\n\
                   {% if insurance is defined and insurance != '' %}{{ insurance }}{% elif date_of_birth %}x{% else %}y{% endif %}\n\
                   {#- a comment with {{ nonsense }} -#}\n\
                   <a href=\"{{ unsubscribe_link }}\">unsubscribe</a> {{ date_of_birth|replace('-', '/') }}";
        assert_eq!(validate("html_body", src, &custom), Ok(()));
        assert_eq!(validate("subject", "No placeholders at all", &[]), Ok(()));
        assert_eq!(validate("subject", "{{- firstname -}}!", &[]), Ok(()));
    }

    /// A contact's value that is a script URL renders inert in HTML (as
    /// typed in text), however its scheme is written.
    #[test]
    fn a_script_url_from_a_value_renders_inert_in_html() {
        let source = r#"<a href="{{ website }}">site</a>"#;
        for url in [
            "javascript:alert(1)",
            " JavaScript:alert(1)",
            "java\tscript:alert(1)",
            "vbscript:msgbox(1)",
            "data:text/html;base64,PHNjcmlwdD4=",
        ] {
            let vars = BTreeMap::from([("website".to_owned(), url.to_owned())]);
            let html = render("html_body", source, &vars, true).unwrap();
            assert!(html.starts_with("<a href=\"unsafe:"), "{url}: {html}");
            assert_eq!(
                render("text_body", "{{ website }}", &vars, false).unwrap(),
                url
            );
        }
        let vars = BTreeMap::from([("website".to_owned(), "https://example.org".to_owned())]);
        let html = render("html_body", source, &vars, true).unwrap();
        assert!(html.starts_with("<a href=\"https:"), "{html}");
    }

    /// Long chains in one tag are refused before the engine parses them
    /// (which recursed once a link and overflowed the stack); a long but
    /// real chain is kept.
    #[test]
    fn refuses_a_tag_too_long_before_the_engine_parses_it() {
        let chains = [
            format!("{{{{ {} firstname }}}}", "not ".repeat(20_000)),
            format!("{{{{ firstname{} }}}}", " | upper".repeat(10_000)),
            format!("{{{{ firstname{} }}}}", " ~ firstname".repeat(10_000)),
            format!(
                "{{% if firstname{} %}}x{{% endif %}}",
                " and firstname".repeat(10_000)
            ),
        ];
        for source in &chains {
            let err = validate("body", source, &[]).unwrap_err();
            assert!(err.message.starts_with("tag too long"), "{}", err.message);
            assert_eq!((err.line, err.column), (1, 1));
        }
        let long = format!("{{{{ firstname{} }}}}", " | trim".repeat(100));
        validate("body", &long, &[]).unwrap();
    }

    #[test]
    fn refuses_misspelt_placeholder_with_position() {
        let err = validate("subject", "{{fistname}}", &[]).unwrap_err();
        assert_eq!(err.placeholder.as_deref(), Some("fistname"));
        assert_eq!((err.line, err.column), (1, 3));
        assert_eq!(
            err.message,
            "unknown placeholder fistname (did you mean firstname?)"
        );

        let err = validate("subject", "{{ fistname }}", &[]).unwrap_err();
        assert_eq!((err.line, err.column), (1, 4));
        assert_eq!(
            err.to_string(),
            "subject: unknown placeholder fistname (did you mean firstname?) at line 1, column 4"
        );

        let err = validate("html_body", "Hi {{ firstname }},\n  see {{ ownr }}", &[]).unwrap_err();
        assert_eq!(err.field, "html_body");
        assert_eq!(err.placeholder.as_deref(), Some("ownr"));
        assert_eq!((err.line, err.column), (2, 10));
        assert!(
            err.message.contains("did you mean owner?"),
            "{}",
            err.message
        );

        // a custom property is suggested too, and a far-off name gets no suggestion
        let custom = vec!["insurance".to_owned()];
        let err = validate("subject", "{{ insurence }}", &custom).unwrap_err();
        assert!(
            err.message.contains("did you mean insurance?"),
            "{}",
            err.message
        );
        let err = validate("subject", "{{ xyz }}", &custom).unwrap_err();
        assert_eq!(err.message, "unknown placeholder xyz");
        // columns count characters, not bytes
        let err = validate("subject", "Grüße {{ vorname }}", &[]).unwrap_err();
        assert_eq!((err.line, err.column), (1, 10));
        // in conditions and filter arguments as well
        let err = validate("subject", "{% if firstnme %}x{% endif %}", &[]).unwrap_err();
        assert_eq!(err.placeholder.as_deref(), Some("firstnme"));
        assert_eq!((err.line, err.column), (1, 7));
        let err = validate("subject", "{{ firstname|default(nick) }}", &[]).unwrap_err();
        assert_eq!(err.placeholder.as_deref(), Some("nick"));
        // runtime-only errors are caught by the trial renders
        let err = validate("subject", "Hi\n {{ firstname|replace(1) }}", &[]).unwrap_err();
        assert_eq!(err.message, "missing argument");
        assert_eq!((err.line, err.column), (2, 15));
    }

    #[test]
    fn refuses_include_import_extends_and_friends() {
        for (src, col) in [
            ("{% include 'x' %}", 4),
            ("{% import 'x' as y %}", 4),
            ("{% extends 'x' %}", 4),
            ("a\n{%- for x in firstname %}{% endfor %}", 5),
            ("{% set x = 1 %}", 4),
            ("{% macro m() %}{% endmacro %}", 4),
            ("{% raw %}{{ x }}{% endraw %}", 4),
            (
                "{% autoescape false %}{{ firstname }}{% endautoescape %}",
                4,
            ),
        ] {
            let err = validate("html_body", src, &[]).unwrap_err();
            assert!(
                err.message.contains("not allowed"),
                "{src}: {}",
                err.message
            );
            assert_eq!(err.column, col, "{src}");
            assert_eq!(err.placeholder, None);
        }
        let err = validate("html_body", "{% include 'x' %}", &[]).unwrap_err();
        assert_eq!(
            err.message,
            "include blocks are not allowed (only if, elif, else and endif)"
        );
        assert_eq!((err.line, err.column), (1, 4));

        for (src, what) in [
            ("{{ firstname.upper() }}", "attribute access"),
            ("{{ owner.name }}", "attribute access"),
            ("{{ firstname[0] }}", "attribute access"),
            ("{{ 'x'.upper() }}", "attribute access"),
            ("{{ range(10) }}", "function calls"),
            ("{{ firstname|safe }}", "filter safe"),
            ("{{ firstname|tojson }}", "filter tojson"),
            ("{{ firstname * 1000 }}", "arithmetic"),
            ("{{ [firstname] }}", "lists"),
            ("{% if firstname is string %}{% endif %}", "test string"),
        ] {
            let err = validate("subject", src, &[]).unwrap_err();
            assert!(err.message.contains(what), "{src}: {}", err.message);
            assert_eq!(err.line, 1);
        }
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = validate("subject", "Hello {{ firstname ", &[]).unwrap_err();
        assert_eq!(err.field, "subject");
        assert!(err.message.starts_with("syntax error"), "{}", err.message);
        assert_eq!(err.line, 1);
        assert!(err.column >= 1, "{err:?}");

        let err = validate("html_body", "line one\nline {{ firstname | }} two", &[]).unwrap_err();
        assert!(err.message.starts_with("syntax error"), "{}", err.message);
        assert_eq!(err.line, 2);
        assert!(err.column > 1, "{err:?}");

        let err = validate("html_body", "a\nb\n{% if firstname %}never closed", &[]).unwrap_err();
        assert!(err.message.starts_with("syntax error"), "{}", err.message);
        assert!(err.line >= 3, "{err:?}");
    }

    #[test]
    fn html_rendering_escapes_values_text_does_not() {
        let v = vars(&[
            ("firstname", "<script>alert(1)</script>"),
            ("practice", "A & B"),
        ]);
        let src = "<p>Hi {{ firstname }} from {{ practice }}</p>";
        let html = render("html_body", src, &v, true).unwrap();
        assert_eq!(
            html,
            "<p>Hi &lt;script&gt;alert(1)&lt;&#x2f;script&gt; from A &amp; B</p>"
        );
        assert!(!html.contains("<script>"));
        let text = render(
            "text_body",
            "Hi {{ firstname }} from {{ practice }}",
            &v,
            false,
        )
        .unwrap();
        assert_eq!(text, "Hi <script>alert(1)</script> from A & B");
    }

    #[test]
    fn rendering_filters_conditions_and_undefined() {
        let v = vars(&[("firstname", "ann"), ("lastname", "")]);
        let src = "Hi {{ firstname | title }}{{ lastname }}{{ missing }}{{ owner | default('team') }}\
                   {% if practice %} of {{ practice }}{% else %}!{% endif %}";
        assert_eq!(render("subject", src, &v, false).unwrap(), "Hi Annteam!");
        // an unvalidated template cannot reach outside: no globals, no loader
        let err = render("subject", "{% include 'x' %}", &v, false).unwrap_err();
        assert_eq!(err.field, "subject");
        let err = render("subject", "{{ firstname|safe }}", &v, true).unwrap_err();
        assert!(err.message.starts_with("unknown filter"), "{}", err.message);
        assert!(!err.message.contains("ann"));
        assert_eq!((err.line, err.column), (1, 14));
        let err = render("subject", "{{ range(3) }}", &v, false).unwrap_err();
        assert!(!err.to_string().contains("ann"));
        // a syntax error at render time is still positioned
        let err = render("subject", "x\n{{ firstname", &v, false).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn fuel_bounds_rendering() {
        let v = vars(&[("firstname", &"x".repeat(100_000))]);
        let src = "{{ firstname|replace('x', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx')|replace('x', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') }}";
        let err = render("html_body", src, &v, true).unwrap_err();
        assert_eq!(err.message, "engine ran out of fuel");
    }

    #[test]
    fn errors_never_carry_values() {
        let v = vars(&[
            ("firstname", "Secret Name"),
            ("lastname", "secret@example.org"),
        ]);
        for src in [
            "{{ firstname|replace(1) }}",
            "{{ lastname|default(1, 2, 3) }}",
            "{{ firstname|upper(1) }}",
        ] {
            if let Err(err) = render("subject", src, &v, false) {
                let shown = format!("{err} {err:?}");
                assert!(
                    !shown.contains("Secret") && !shown.contains("example.org"),
                    "{shown}"
                );
            }
        }
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("fistname", "firstname"), 1);
        assert_eq!(edit_distance("frist", "first"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(suggest("FirstName", &[]), Some("firstname"));
        assert_eq!(suggest("unsubscribe", &[]), None);
    }
}
