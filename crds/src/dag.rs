//! The agent graph of a Workflow: checked once here, and used by everyone who needs it
//! (the operator's and the appliance's validation, the API's engine).
//!
//! Every error names the agent at fault, because that is what a user has to fix.

use std::collections::{BTreeMap, BTreeSet};

use crate::workflow::AgentSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("agent {agent:?} is defined more than once")]
    DuplicateName { agent: String },
    #[error("agent {agent:?} depends on {missing:?}, which is not an agent of this workflow")]
    UnknownDependency { agent: String, missing: String },
    #[error("agent {agent:?} depends on itself")]
    SelfDependency { agent: String },
    #[error("dependsOn forms a cycle: {}", cycle.join(" depends on "))]
    Cycle {
        /// The agents around the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    #[error(
        "agent {agent:?} uses {{{{{variable}}}}}, which is not a template variable (use {{{{input}}}} or {{{{agents.<name>.output}}}})"
    )]
    UnknownVariable { agent: String, variable: String },
    #[error(
        "agent {agent:?} reads {{{{agents.{referenced}.output}}}}, but {referenced:?} is not one of its ancestors (add it to dependsOn, directly or through another agent)"
    )]
    NotAnAncestor { agent: String, referenced: String },
}

impl DagError {
    /// The agent to blame (for a cycle, the first agent on it).
    pub fn agent(&self) -> &str {
        match self {
            DagError::DuplicateName { agent }
            | DagError::UnknownDependency { agent, .. }
            | DagError::SelfDependency { agent }
            | DagError::UnknownVariable { agent, .. }
            | DagError::NotAnAncestor { agent, .. } => agent,
            DagError::Cycle { cycle } => cycle.first().map(String::as_str).unwrap_or_default(),
        }
    }
}

/// A valid agent graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    /// Agents grouped in waves: every agent's dependencies are in earlier waves, so
    /// the agents of one wave may run concurrently.
    pub waves: Vec<Vec<String>>,
    /// Every agent's transitive dependencies.
    pub ancestors: BTreeMap<String, BTreeSet<String>>,
}

impl Dag {
    /// A topological order (wave by wave, names sorted within a wave).
    pub fn order(&self) -> impl Iterator<Item = &str> {
        self.waves.iter().flatten().map(String::as_str)
    }
}

/// A variable of a prompt template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateVariable {
    Input,
    AgentOutput(String),
}

/// Finds the `{{ ... }}` variables in a prompt, in order. Unknown ones come back as
/// errors carrying their text.
pub fn template_variables(prompt: &str) -> Vec<Result<TemplateVariable, String>> {
    let mut variables = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        variables.push(parse_variable(name).ok_or_else(|| name.to_owned()));
        rest = &after[end + 2..];
    }
    variables
}

fn parse_variable(name: &str) -> Option<TemplateVariable> {
    if name == "input" {
        return Some(TemplateVariable::Input);
    }
    let agent = name.strip_prefix("agents.")?.strip_suffix(".output")?;
    (!agent.is_empty() && !agent.contains('.'))
        .then(|| TemplateVariable::AgentOutput(agent.to_owned()))
}

/// Checks the graph: unique names, existing dependencies, no cycle, and template
/// variables that only read ancestors. Returns every error found, not just the first,
/// in agent order.
pub fn validate(agents: &[AgentSpec]) -> Result<Dag, Vec<DagError>> {
    let errors = membership_errors(agents);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut errors = Vec::new();

    let dependencies: BTreeMap<&str, BTreeSet<&str>> = agents
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let waves = match waves(&dependencies) {
        Ok(waves) => waves,
        Err(cycle) => return Err(vec![DagError::Cycle { cycle }]),
    };

    let mut ancestors: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in waves.iter().flatten() {
        let mut mine = BTreeSet::new();
        for dependency in &dependencies[name.as_str()] {
            mine.insert((*dependency).to_owned());
            mine.extend(ancestors[*dependency].iter().cloned());
        }
        ancestors.insert(name.clone(), mine);
    }

    for agent in agents {
        for variable in template_variables(&agent.prompt) {
            match variable {
                Ok(TemplateVariable::Input) => {}
                Ok(TemplateVariable::AgentOutput(referenced)) => {
                    if !ancestors[&agent.name].contains(&referenced) {
                        errors.push(DagError::NotAnAncestor {
                            agent: agent.name.clone(),
                            referenced,
                        });
                    }
                }
                Err(variable) => errors.push(DagError::UnknownVariable {
                    agent: agent.name.clone(),
                    variable,
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(Dag { waves, ancestors })
    } else {
        Err(errors)
    }
}

/// What the API server checks of the graph without walking it (the list-map key on
/// `name` and the CEL rules on `dependsOn`): unique names, and dependencies that name
/// another agent of the workflow.
fn membership_errors(agents: &[AgentSpec]) -> Vec<DagError> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for agent in agents {
        if !seen.insert(agent.name.as_str()) {
            errors.push(DagError::DuplicateName {
                agent: agent.name.clone(),
            });
        }
    }
    for agent in agents {
        for dependency in &agent.depends_on {
            if dependency == &agent.name {
                errors.push(DagError::SelfDependency {
                    agent: agent.name.clone(),
                });
            } else if !seen.contains(dependency.as_str()) {
                errors.push(DagError::UnknownDependency {
                    agent: agent.name.clone(),
                    missing: dependency.clone(),
                });
            }
        }
    }
    errors
}

/// The garde mirror of the Workflow's CEL rules (`spec.agents`), for those who
/// validate a [`crate::WorkflowSpec`] alone, like the platform API.
pub(crate) fn check_membership(agents: &[AgentSpec], _: &()) -> garde::Result {
    let errors = membership_errors(agents);
    if errors.is_empty() {
        return Ok(());
    }
    Err(garde::Error::new(
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

/// Kahn's algorithm by waves; on a cycle, returns one cycle's path.
fn waves(dependencies: &BTreeMap<&str, BTreeSet<&str>>) -> Result<Vec<Vec<String>>, Vec<String>> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut waves = Vec::new();
    while done.len() < dependencies.len() {
        let wave: Vec<&str> = dependencies
            .iter()
            .filter(|(name, deps)| !done.contains(*name) && deps.iter().all(|d| done.contains(d)))
            .map(|(name, _)| *name)
            .collect();
        if wave.is_empty() {
            return Err(find_cycle(dependencies, &done));
        }
        done.extend(wave.iter().copied());
        waves.push(wave.into_iter().map(str::to_owned).collect());
    }
    Ok(waves)
}

fn find_cycle(dependencies: &BTreeMap<&str, BTreeSet<&str>>, done: &BTreeSet<&str>) -> Vec<String> {
    // Every remaining agent has a remaining dependency, so walking dependencies from
    // any of them must revisit an agent: that revisit closes the cycle.
    let start = dependencies
        .keys()
        .find(|n| !done.contains(*n))
        .copied()
        .unwrap_or_default();
    let mut path = vec![start];
    loop {
        let current = *path.last().unwrap_or(&start);
        let Some(next) = dependencies[current]
            .iter()
            .find(|d| !done.contains(*d))
            .copied()
        else {
            break;
        };
        if let Some(position) = path.iter().position(|n| *n == next) {
            let mut cycle: Vec<String> = path[position..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(next.to_owned());
            return cycle;
        }
        path.push(next);
    }
    path.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, depends_on: &[&str], prompt: &str) -> AgentSpec {
        AgentSpec {
            name: name.into(),
            role: "writer".into(),
            provider: "ollama".into(),
            model: "llama3.2:3b".into(),
            prompt: prompt.into(),
            depends_on: depends_on.iter().map(|s| (*s).into()).collect(),
            knowledge_base: None,
            timeout_seconds: None,
        }
    }

    #[test]
    fn a_diamond_runs_its_middle_in_one_wave() {
        let dag = validate(&[
            agent("a", &[], "{{input}}"),
            agent("b", &["a"], "{{agents.a.output}}"),
            agent("c", &["a"], "{{ agents.a.output }}"),
            agent(
                "d",
                &["b", "c"],
                "{{agents.a.output}} {{agents.b.output}} {{agents.c.output}}",
            ),
        ])
        .unwrap();
        assert_eq!(dag.waves, vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
        assert_eq!(dag.order().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(dag.ancestors["d"], ["a", "b", "c"].map(String::from).into());
    }

    #[test]
    fn each_error_names_the_agent() {
        let cases: Vec<(Vec<AgentSpec>, DagError)> = vec![
            (
                vec![agent("a", &[], "x"), agent("a", &[], "y")],
                DagError::DuplicateName { agent: "a".into() },
            ),
            (
                vec![agent("a", &["ghost"], "x")],
                DagError::UnknownDependency {
                    agent: "a".into(),
                    missing: "ghost".into(),
                },
            ),
            (
                vec![agent("a", &["a"], "x")],
                DagError::SelfDependency { agent: "a".into() },
            ),
            (
                vec![
                    agent("a", &["c"], "x"),
                    agent("b", &["a"], "x"),
                    agent("c", &["b"], "x"),
                ],
                DagError::Cycle {
                    cycle: vec!["a".into(), "c".into(), "b".into(), "a".into()],
                },
            ),
            (
                vec![agent("a", &[], "{{secret}}")],
                DagError::UnknownVariable {
                    agent: "a".into(),
                    variable: "secret".into(),
                },
            ),
            (
                vec![agent("a", &[], "x"), agent("b", &[], "{{agents.a.output}}")],
                DagError::NotAnAncestor {
                    agent: "b".into(),
                    referenced: "a".into(),
                },
            ),
        ];
        for (agents, expected) in cases {
            let errors = validate(&agents).unwrap_err();
            assert_eq!(errors, vec![expected.clone()]);
            assert!(
                errors[0].to_string().contains(expected.agent()),
                "{}",
                errors[0]
            );
        }
    }

    #[test]
    fn a_descendant_cannot_be_read() {
        let errors = validate(&[
            agent("a", &[], "{{agents.b.output}}"),
            agent("b", &["a"], "{{agents.a.output}}"),
        ])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![DagError::NotAnAncestor {
                agent: "a".into(),
                referenced: "b".into()
            }]
        );
    }

    #[test]
    fn unterminated_braces_are_plain_text() {
        assert!(template_variables("{{input").is_empty());
        assert_eq!(template_variables("{{input}} and {{ input }}").len(), 2);
    }
}
