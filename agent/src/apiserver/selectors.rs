//! Label and field selectors, parsed as k8s.io/apimachinery parses them
//! (`labels.Parse`, `fields.ParseSelector`) and with its error messages, so a
//! malformed selector is a 400 naming it rather than a filter that silently
//! matches nothing.

use serde_json::Value;

use super::validation::{go_quote, label_value, qualified_name};

#[derive(Debug, Clone, PartialEq)]
enum Operator {
    Exists,
    DoesNotExist,
    Equals,
    NotEquals,
    In,
    NotIn,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    Not,
    NotEquals,
    Equals,
    DoubleEquals,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    Greater,
    Less,
    End,
}

impl Token {
    fn literal(&self) -> &str {
        match self {
            Token::Identifier(s) => s,
            Token::Not => "!",
            Token::NotEquals => "!=",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
            Token::Greater => ">",
            Token::Less => "<",
            Token::End => "",
        }
    }
}

const SPECIAL: &[char] = &['!', '=', '(', ')', ',', '>', '<'];

fn lex(selector: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = selector.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if SPECIAL.contains(&c) {
            chars.next();
            let token = match (c, chars.peek()) {
                ('!', Some('=')) => Token::NotEquals,
                ('=', Some('=')) => Token::DoubleEquals,
                ('!', _) => Token::Not,
                ('=', _) => Token::Equals,
                ('(', _) => Token::Open,
                (')', _) => Token::Close,
                (',', _) => Token::Comma,
                ('>', _) => Token::Greater,
                _ => Token::Less,
            };
            if matches!(token, Token::NotEquals | Token::DoubleEquals) {
                chars.next();
            }
            tokens.push(token);
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || SPECIAL.contains(&c) {
                break;
            }
            word.push(c);
            chars.next();
        }
        tokens.push(match word.as_str() {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier(word),
        });
    }
    tokens.push(Token::End);
    tokens
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.position.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        self.position += 1;
        token
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut operator = None;
        if *self.peek() == Token::Not {
            self.next();
            operator = Some(Operator::DoesNotExist);
        }
        let key = match self.next() {
            Token::Identifier(key) => key,
            other => return Err(format!("found '{}', expected: identifier", other.literal())),
        };
        let problems = qualified_name(&key);
        if !problems.is_empty() {
            return Err(format!("<nil>: Invalid value: {}: {}", go_quote(&key), problems.join("; ")));
        }
        let operator = match operator {
            Some(op) => op,
            None if matches!(self.peek(), Token::End | Token::Comma) => Operator::Exists,
            None => match self.next() {
                Token::Equals | Token::DoubleEquals => Operator::Equals,
                Token::NotEquals => Operator::NotEquals,
                Token::In => Operator::In,
                Token::NotIn => Operator::NotIn,
                Token::Greater => Operator::GreaterThan,
                Token::Less => Operator::LessThan,
                other => return Err(format!("found '{}', expected: [!= < = == > in notin]", other.literal())),
            },
        };
        let values = match operator {
            Operator::Exists | Operator::DoesNotExist => vec![],
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => match self.peek().clone() {
                Token::Identifier(value) => {
                    self.next();
                    vec![value]
                }
                Token::End | Token::Comma => vec![String::new()],
                other => return Err(format!("found '{}', expected: identifier", other.literal())),
            },
        };
        let mut errors = Vec::new();
        if matches!(operator, Operator::GreaterThan | Operator::LessThan) && values[0].parse::<i64>().is_err() {
            errors.push(format!(
                "values[0]: Invalid value: {}: for 'Gt', 'Lt' operators, the value must be an integer",
                go_quote(&values[0])
            ));
        }
        for (i, value) in values.iter().enumerate() {
            let problems = label_value(value);
            if !problems.is_empty() {
                errors.push(format!("values[{i}][{key}]: Invalid value: {}: {}", go_quote(value), problems.join("; ")));
            }
        }
        match errors.len() {
            0 => Ok(Requirement { key, operator, values }),
            1 => Err(errors.remove(0)),
            _ => Err(format!("[{}]", errors.join(", "))),
        }
    }

    /// `( value, value, ... )` after `in` / `notin`.
    fn value_set(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            Token::Open => {}
            other => return Err(format!("found '{}', expected: '('", other.literal())),
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Token::Identifier(value) => values.push(value),
                Token::Close if values.is_empty() => return Ok(vec![String::new()]),
                other => return Err(format!("found '{}', expected: ',', ')' or identifier", other.literal())),
            }
            match self.next() {
                Token::Comma => continue,
                Token::Close => return Ok(values),
                other => return Err(format!("found '{}', expected: ',' or ')'", other.literal())),
            }
        }
    }
}

impl LabelSelector {
    /// Parses a label selector; the error is kube-apiserver's message.
    pub fn parse(selector: &str) -> Result<LabelSelector, String> {
        let mut parser = Parser { tokens: lex(selector), position: 0 };
        let mut requirements = Vec::new();
        loop {
            match parser.peek() {
                Token::End => break,
                Token::Identifier(_) | Token::Not => {
                    let requirement = parser.requirement().map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(requirement);
                    match parser.next() {
                        Token::End => break,
                        Token::Comma => {
                            if !matches!(parser.peek(), Token::Identifier(_) | Token::Not) {
                                let found = parser.peek().literal().to_string();
                                return Err(format!("found '{found}', expected: identifier after ','"));
                            }
                        }
                        other => return Err(format!("found '{}', expected: ',' or 'end of string'", other.literal())),
                    }
                }
                other => {
                    return Err(format!("found '{}', expected: !, identifier, or 'end of string'", other.literal()))
                }
            }
        }
        Ok(LabelSelector(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|r| {
            let value = labels.get(&r.key).and_then(Value::as_str);
            let number = || value.and_then(|v| v.parse::<i64>().ok());
            let bound = || r.values[0].parse::<i64>().ok();
            match r.operator {
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
                Operator::Equals | Operator::In => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Operator::NotEquals | Operator::NotIn => !value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Operator::GreaterThan => number().zip(bound()).is_some_and(|(n, b)| n > b),
                Operator::LessThan => number().zip(bound()).is_some_and(|(n, b)| n < b),
            }
        })
    }
}

/// A parsed field selector: `path=value`, `path==value`, `path!=value` terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    /// Parses a field selector; the error is kube-apiserver's message.
    pub fn parse(selector: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in selector.split(',').filter(|t| !t.is_empty()) {
            let parsed = if let Some((path, value)) = term.split_once("!=") {
                Some((path, value, false))
            } else if let Some((path, value)) = term.split_once("==") {
                Some((path, value, true))
            } else {
                term.split_once('=').map(|(path, value)| (path, value, true))
            };
            match parsed {
                Some((path, value, equal)) if !path.trim().is_empty() => {
                    terms.push((path.trim().to_string(), value.trim().to_string(), equal))
                }
                _ => return Err(format!("invalid selector: '{selector}'; can't understand '{term}'")),
            }
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, value, equal)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            (object.pointer(&pointer).and_then(Value::as_str) == Some(value.as_str())) == *equal
        })
    }
}

/// The selectors of one list, watch or deletecollection request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    /// From the request's `labelSelector` and `fieldSelector` parameters.
    pub fn from_query(query: &std::collections::HashMap<String, String>) -> Result<Selectors, String> {
        let labels = query.get("labelSelector").map(|s| LabelSelector::parse(s)).transpose()?.unwrap_or_default();
        let fields = query.get("fieldSelector").map(|s| FieldSelector::parse(s)).transpose()?.unwrap_or_default();
        Ok(Selectors { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(selector: &str) -> LabelSelector {
        LabelSelector::parse(selector).unwrap()
    }

    #[test]
    fn label_selectors_match_as_kubernetes() {
        let object = json!({"metadata": {"labels": {"app": "x", "tier": "db", "n": "5"}}});
        assert!(labels("app=x,tier").matches(&object));
        assert!(labels("app==x, !missing").matches(&object));
        assert!(!labels("app!=x").matches(&object));
        assert!(labels("tier in (db, web),app notin (y)").matches(&object));
        assert!(!labels("tier notin (db)").matches(&object));
        assert!(labels("n>4,n<6").matches(&object));
        assert!(labels("").matches(&object));
        assert!(!labels("missing=").matches(&object));
    }

    #[test]
    fn malformed_label_selectors_are_refused_with_apimachinerys_messages() {
        let error = LabelSelector::parse("a/b/c!!").unwrap_err();
        assert!(
            error.starts_with(
                "unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a qualified name must consist"
            ),
            "{error}"
        );
        let error = LabelSelector::parse("app=x y").unwrap_err();
        assert_eq!(error, "found 'y', expected: ',' or 'end of string'");
        let error = LabelSelector::parse("app=x!y").unwrap_err();
        assert_eq!(error, "found '!', expected: ',' or 'end of string'");
        let error = LabelSelector::parse(&format!("app={}", "v".repeat(64))).unwrap_err();
        assert!(error.starts_with("unable to parse requirement: values[0][app]: Invalid value: \"vvvv"), "{error}");
        assert!(error.ends_with(": must be no more than 63 characters"), "{error}");
        assert_eq!(
            LabelSelector::parse("app in x").unwrap_err(),
            "unable to parse requirement: found 'x', expected: '('"
        );
        assert_eq!(LabelSelector::parse("app,").unwrap_err(), "found '', expected: identifier after ','");
        assert_eq!(LabelSelector::parse("=x").unwrap_err(), "found '=', expected: !, identifier, or 'end of string'");
        assert!(LabelSelector::parse("n>x").unwrap_err().contains("the value must be an integer"));
    }

    #[test]
    fn field_selectors() {
        let object = json!({"metadata": {"name": "a", "namespace": "default"}});
        let parse = |s| FieldSelector::parse(s).unwrap();
        assert!(parse("metadata.name=a,metadata.namespace==default").matches(&object));
        assert!(!parse("metadata.name!=a").matches(&object));
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert!(FieldSelector::parse("=a").is_err());
    }
}
