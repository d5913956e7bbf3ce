//! Prompt templates: `{{input}}` and `{{agents.<name>.output}}`. Which variables a
//! prompt may use is checked when the workflow is saved (`iafactory_crds::dag`); this
//! only substitutes them.

use std::collections::HashMap;

/// Substitutes the variables of `prompt`. A variable with no value (which validation
/// rules out) is left as written rather than silently emptied.
pub fn render(prompt: &str, input: &str, outputs: &HashMap<String, String>) -> String {
    let mut rendered = String::with_capacity(prompt.len() + input.len());
    let mut rest = prompt;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        rendered.push_str(&rest[..start]);
        let name = after[..end].trim();
        let value = if name == "input" {
            Some(input)
        } else {
            name.strip_prefix("agents.")
                .and_then(|n| n.strip_suffix(".output"))
                .and_then(|agent| outputs.get(agent))
                .map(String::as_str)
        };
        match value {
            Some(value) => rendered.push_str(value),
            None => rendered.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    rendered.push_str(rest);
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_input_and_ancestor_outputs_with_or_without_spaces() {
        let outputs = HashMap::from([("research".to_owned(), "facts".to_owned())]);
        assert_eq!(
            render(
                "Q: {{input}} / {{ agents.research.output }}.",
                "why?",
                &outputs
            ),
            "Q: why? / facts."
        );
    }

    #[test]
    fn leaves_unknown_and_unterminated_variables_as_written() {
        let outputs = HashMap::new();
        assert_eq!(
            render("{{agents.x.output}} {{input", "i", &outputs),
            "{{agents.x.output}} {{input"
        );
        assert_eq!(render("no variables", "i", &outputs), "no variables");
        // A value that looks like a variable is not expanded again.
        assert_eq!(render("{{input}}", "{{input}}", &outputs), "{{input}}");
    }

    #[test]
    fn keeps_arabic_text_intact() {
        let outputs = HashMap::from([("a".to_owned(), "نص عربي".to_owned())]);
        assert_eq!(
            render("لخص: {{agents.a.output}}", "", &outputs),
            "لخص: نص عربي"
        );
    }
}
