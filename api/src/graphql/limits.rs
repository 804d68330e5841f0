//! Static limits on a GraphQL operation: depth, complexity, aliases and directives, measured
//! on the parsed document before anything runs.
//!
//! The HTTP layer calls [`check`] between parsing and execution, so a hostile operation is
//! rejected with a stable code (`QUERY_TOO_DEEP`, `QUERY_TOO_COMPLEX`, `TOO_MANY_ALIASES`,
//! or `BAD_USER_INPUT` for broken fragments) before a single resolver runs.
//!
//! This module must never execute, resolve or fully validate anything: it reads the
//! document, the request's variables and a [`SchemaShape`] built once from the SDL, nothing
//! else (no I/O, no context, no schema object). What it cannot interpret (an unknown field,
//! a mistyped argument, a missing variable) it measures conservatively and leaves to the
//! executor's validation to report. It must also never take more than linear time or
//! unbounded stack in the size of the document, whatever the document: fragments are
//! measured once each and memoised (so "fragment bombs" cost nothing to measure), and the
//! walk refuses to nest deeper than [`MAX_NESTING`] selection sets.
//!
//! Execution validates the whole document, not only the operation it runs, and some of
//! async-graphql's validation passes cost the square of the document's size (one rule
//! flattens every selection set, another inlines each fragment wherever it is spread,
//! in every operation). So [`check`] also bounds the whole document: every operation,
//! selected or not, counts towards [`QueryLimits::max_selections`] with its fragments
//! expanded, every fragment is checked for cycles and nesting, and a fragment that no
//! operation uses is refused, as validation would refuse it anyway (after paying for it).

use std::collections::{HashMap, HashSet};

use async_graphql::{
    Name, Number, Value as ConstValue, Variables,
    parser::{
        parse_schema,
        types::{
            BaseType, DocumentOperations, ExecutableDocument, Field, FieldDefinition, OperationDefinition,
            OperationType, Selection, SelectionSet, Type, TypeKind, TypeSystemDefinition,
        },
    },
};
use taskwire_domain::DomainError;

use crate::error::ApiError;

/// Arguments that bound the length of the list a field returns (Relay pagination).
const PAGE_SIZE_ARGUMENTS: [&str; 2] = ["first", "last"];

/// List arguments whose length is the length of the list the field returns
/// (`nodes(ids:)` answers one item per id).
const LIST_LENGTH_ARGUMENTS: [&str; 1] = ["ids"];

/// Root fields of a query that are exempt from depth and complexity (introspection).
const INTROSPECTION_ROOT_FIELDS: [&str; 2] = ["__schema", "__type"];

/// The most selection sets (fields, inline fragments and fragment spreads, each one level)
/// the walk follows on one path, whatever the configured limits.
///
/// The walk is recursive, and so are some of the executor's validation rules; this hard
/// ceiling keeps both far from the end of the thread's stack when fragments spread
/// fragments hundreds of levels deep (the parser alone only bounds nesting inside one
/// definition). An operation beyond it is reported as `QUERY_TOO_DEEP` with this limit.
pub const MAX_NESTING: usize = 128;

/// Limits on an operation (`TASKWIRE_LIMIT_*`; the defaults, safe for a public endpoint, are in
/// `config::KEYS`).
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Deepest field nesting (a root field is at depth 1).
    pub max_depth: usize,
    /// Highest cost, where a field costs 1 plus its multiplier times the cost of its
    /// sub-selection (see [`check`]).
    pub max_complexity: usize,
    /// Most aliased fields, counted in the expanded tree.
    pub max_aliases: usize,
    /// Most directive usages, counted in the expanded tree.
    pub max_directives: usize,
    /// The multiplier of a list field that has no `first`/`last` argument.
    pub default_list_size: usize,
    /// Most selections in the whole document (every operation, selected or not), with
    /// fragments expanded wherever they are spread: each field, inline fragment and
    /// fragment spread counts 1, and so does each argument and directive on them.
    /// Introspection fields count too.
    pub max_selections: usize,
}

/// What an operation measured (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryCost {
    /// Deepest field nesting, introspection root fields excluded.
    pub depth: usize,
    /// Computed cost, introspection root fields excluded.
    pub complexity: usize,
    /// Aliased fields in the expanded tree.
    pub aliases: usize,
    /// Directive usages in the expanded tree.
    pub directives: usize,
}

/// Why [`SchemaShape::from_sdl`] failed (a bug in the schema or its printer, found at startup).
#[derive(Debug, thiserror::Error)]
pub enum SchemaShapeError {
    /// The SDL does not parse.
    #[error("the schema SDL does not parse: {0}")]
    Parse(#[from] async_graphql::parser::Error),
    /// The root query type is not an object type of the SDL.
    #[error("the schema SDL defines no query type `{0}`")]
    MissingQueryType(String),
}

/// The shape of the schema the analysis needs: for each object or interface type, each
/// field's named return type, whether it returns a list, and its page-size arguments
/// (`first`/`last` of type `Int`) with their default values.
#[derive(Debug)]
pub struct SchemaShape {
    /// Object and interface types by name.
    types: HashMap<Name, TypeShape>,
    /// Root type of queries.
    query: Name,
    /// Root type of mutations.
    mutation: Name,
    /// Root type of subscriptions.
    subscription: Name,
}

/// The fields of one object or interface type.
#[derive(Debug, Default)]
struct TypeShape {
    fields: HashMap<Name, FieldShape>,
}

/// What the analysis knows of one field.
#[derive(Debug)]
struct FieldShape {
    /// The named type at the bottom of the return type (`Task` for `[Task!]!`).
    type_name: Name,
    /// Whether the return type is a list.
    is_list: bool,
    /// The field's `first`/`last` arguments of type `Int`.
    page_size_arguments: Vec<PageSizeArgument>,
}

/// A `first` or `last` argument of a field.
#[derive(Debug)]
struct PageSizeArgument {
    name: Name,
    /// The schema's default value, when it has one (an `Int`).
    default: Option<usize>,
}

impl SchemaShape {
    /// Builds the shape from the SDL (`crate::graphql::sdl()`), once at startup.
    ///
    /// Fails when the SDL does not parse or has no query type: a shape without its root
    /// type would measure every query as unknown fields, which is no protection at all.
    pub fn from_sdl(sdl: &str) -> Result<SchemaShape, SchemaShapeError> {
        let document = parse_schema(sdl)?;
        let mut types: HashMap<Name, TypeShape> = HashMap::new();
        let (mut query, mut mutation, mut subscription) = (None, None, None);
        for definition in &document.definitions {
            match definition {
                TypeSystemDefinition::Schema(schema) => {
                    let schema = &schema.node;
                    query = schema.query.as_ref().map(|name| name.node.clone()).or(query);
                    mutation = schema.mutation.as_ref().map(|name| name.node.clone()).or(mutation);
                    subscription = schema.subscription.as_ref().map(|name| name.node.clone()).or(subscription);
                }
                TypeSystemDefinition::Type(definition) => {
                    let fields = match &definition.node.kind {
                        TypeKind::Object(object) => &object.fields,
                        TypeKind::Interface(interface) => &interface.fields,
                        _ => continue,
                    };
                    // `extend type` adds to the same entry.
                    let type_name = definition.node.name.node.clone();
                    let connection = type_name.ends_with("Connection");
                    let shape = types.entry(type_name).or_default();
                    for field in fields {
                        let mut field_shape = FieldShape::new(&field.node);
                        // A Relay page: the connection field's `first` already counted its
                        // items, so `edges`/`nodes` must not multiply them again.
                        if connection && matches!(field.node.name.node.as_str(), "edges" | "nodes") {
                            field_shape.is_list = false;
                        }
                        shape.fields.insert(field.node.name.node.clone(), field_shape);
                    }
                }
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        let query = query.unwrap_or_else(|| Name::new("Query"));
        if !types.contains_key(&query) {
            return Err(SchemaShapeError::MissingQueryType(query.to_string()));
        }
        Ok(SchemaShape {
            types,
            query,
            mutation: mutation.unwrap_or_else(|| Name::new("Mutation")),
            subscription: subscription.unwrap_or_else(|| Name::new("Subscription")),
        })
    }

    /// The object or interface type of that name, if the schema has one.
    fn object(&self, name: &Name) -> Option<&TypeShape> {
        self.types.get(name)
    }
}

impl FieldShape {
    fn new(definition: &FieldDefinition) -> FieldShape {
        let ty = &definition.ty.node;
        let page_size_arguments = definition
            .arguments
            .iter()
            .map(|argument| &argument.node)
            .filter(|argument| {
                PAGE_SIZE_ARGUMENTS.contains(&argument.name.node.as_str())
                    && matches!(&argument.ty.node.base, BaseType::Named(name) if name == "Int")
            })
            .map(|argument| PageSizeArgument {
                name: argument.name.node.clone(),
                default: argument.default_value.as_ref().and_then(|value| const_count(&value.node)),
            })
            .collect();
        FieldShape {
            type_name: named_type(ty).clone(),
            is_list: matches!(ty.base, BaseType::List(_)),
            page_size_arguments,
        }
    }
}

/// The named type under any list wrappers.
fn named_type(ty: &Type) -> &Name {
    match &ty.base {
        BaseType::Named(name) => name,
        BaseType::List(inner) => named_type(inner),
    }
}

/// Checks the operation `operation_name` selects (as GraphQL selects it: the only
/// operation when no name is given, else the one of that name) against `limits`.
///
/// - Depth: a root field is at depth 1, its sub-fields at 2, and so on; fragments add no
///   depth of their own. `__typename` counts like any field.
/// - Complexity: a selection set costs the sum over its fields of
///   `1 + multiplier × cost(sub-selection)`, where the multiplier is the field's
///   `first`/`last` argument when the schema field has one (literal, variable, or the
///   schema default; negative counts as 0), else for a list field the length of its
///   `ids` list argument (`nodes(ids:)`) when given, else `default_list_size`,
///   else 1. The `edges` and `nodes` lists of a `…Connection` type count once: the
///   connection field's `first` already multiplied them. Arithmetic saturates.
/// - Aliases and directives: every aliased field and every directive usage (on the
///   operation, fields, fragment spreads and inline fragments) of the expanded tree.
/// - The root fields `__schema` and `__type` of a query are exempt from depth and
///   complexity (their aliases and directives still count). Only fields of exactly those
///   names in the query's root selection set (directly or through fragments spread there)
///   are exempt; fragments' names play no part.
///
/// When several limits are exceeded, the first of aliases, depth, directives, complexity
/// is reported. A fragment cycle or an unknown fragment (in any fragment of the document,
/// used or not) is `BAD_USER_INPUT`; nesting beyond [`MAX_NESTING`] is `QUERY_TOO_DEEP`.
/// An operation that cannot be selected measures as [`QueryCost::default`]: execution
/// reports that error itself.
///
/// Then the whole document, which validation reads in full whatever the operation name:
/// more than `max_selections` selections over all its operations (see
/// [`QueryLimits::max_selections`]) is `QUERY_TOO_COMPLEX`, a fragment no operation
/// spreads is `BAD_USER_INPUT`, and cycles and nesting are checked in every definition.
pub fn check(
    shape: &SchemaShape,
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
    limits: &QueryLimits,
) -> Result<QueryCost, ApiError> {
    let cost = match select_operation(document, operation_name) {
        Some(operation) => check_operation(shape, document, operation, variables, limits)?,
        None => QueryCost::default(),
    };
    check_document(document, limits.max_selections)?;
    Ok(cost)
}

/// Measures the selected operation and applies the per-operation limits.
fn check_operation(
    shape: &SchemaShape,
    document: &ExecutableDocument,
    operation: &OperationDefinition,
    variables: &Variables,
    limits: &QueryLimits,
) -> Result<QueryCost, ApiError> {
    let (root, scope) = match operation.ty {
        OperationType::Query => (&shape.query, Scope::QueryRoot),
        OperationType::Mutation => (&shape.mutation, Scope::Nested),
        OperationType::Subscription => (&shape.subscription, Scope::Nested),
    };

    let mut walker = Walker::new(shape, document, operation, variables, limits.default_list_size);
    let mut measure = walker.selection_set(&operation.selection_set.node, shape.object(root), scope, 0)?;
    measure.directives = measure.directives.saturating_add(operation.directives.len());
    if measure.nesting > MAX_NESTING {
        return Err(ApiError::QueryTooDeep { limit: MAX_NESTING });
    }

    let cost = QueryCost {
        depth: measure.depth,
        complexity: measure.complexity,
        aliases: measure.aliases,
        directives: measure.directives,
    };
    if cost.aliases > limits.max_aliases {
        Err(ApiError::TooManyAliases { limit: limits.max_aliases })
    } else if cost.depth > limits.max_depth {
        Err(ApiError::QueryTooDeep { limit: limits.max_depth })
    } else if cost.directives > limits.max_directives {
        Err(ApiError::QueryTooComplex {
            measured: format!("{} directives", cost.directives),
            limit: limits.max_directives,
        })
    } else if cost.complexity > limits.max_complexity {
        Err(ApiError::QueryTooComplex { measured: format!("cost {}", cost.complexity), limit: limits.max_complexity })
    } else {
        Ok(cost)
    }
}

/// Bounds what validation will read: every operation and fragment of the document.
///
/// One pass over the document with each fragment measured once (memoised), so it costs
/// linear time whatever the document.
fn check_document(document: &ExecutableDocument, max_selections: usize) -> Result<(), ApiError> {
    let mut sizer = DocumentSizer { document, measured: HashMap::new(), in_progress: HashSet::new() };
    let mut selections: usize = 0;
    for (_, operation) in document.operations.iter() {
        let operation = &operation.node;
        let size = sizer.selection_set(&operation.selection_set.node, 0)?;
        if size.nesting > MAX_NESTING {
            return Err(ApiError::QueryTooDeep { limit: MAX_NESTING });
        }
        let own = operation.directives.len().saturating_add(operation.variable_definitions.len());
        selections = selections.saturating_add(size.selections).saturating_add(own);
    }
    // What the operations reached, before the unused fragments are measured below.
    let used: HashSet<&Name> = sizer.measured.keys().copied().collect();
    // Validation follows spreads in unused fragments too: cycles and overlong chains must
    // not reach it from there either.
    for name in document.fragments.keys() {
        if sizer.fragment(name, 0)?.nesting > MAX_NESTING {
            return Err(ApiError::QueryTooDeep { limit: MAX_NESTING });
        }
    }
    if selections > max_selections {
        return Err(ApiError::QueryTooComplex { measured: format!("{selections} selections"), limit: max_selections });
    }
    if let Some(name) = document.fragments.keys().find(|name| !used.contains(name)) {
        return Err(DomainError::invalid("query", format!("fragment \"{name}\" is never used")).into());
    }
    Ok(())
}

/// Selections and nesting of a selection set, fragments expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    /// Fields, inline fragments and spreads, with their arguments and directives.
    selections: usize,
    /// Deepest nesting of fields, inline fragments and spreads (see [`MAX_NESTING`]).
    nesting: usize,
}

/// One walk over a whole document, with its fragment memo; it needs no schema, and no
/// variables (selections do not depend on them), so one memo serves every operation.
struct DocumentSizer<'a> {
    document: &'a ExecutableDocument,
    /// Measured fragments: their own selection sets' sizes.
    measured: HashMap<&'a Name, Size>,
    /// Fragments on the current path: meeting one again is a cycle.
    in_progress: HashSet<&'a Name>,
}

impl<'a> DocumentSizer<'a> {
    /// The size of a selection set `nesting` levels below the start of the walk.
    fn selection_set(&mut self, set: &'a SelectionSet, nesting: usize) -> Result<Size, ApiError> {
        // The walk recurses: stop before the stack could run out.
        if nesting > MAX_NESTING {
            return Err(ApiError::QueryTooDeep { limit: MAX_NESTING });
        }
        let mut total = Size::default();
        for selection in &set.items {
            let (inner, arguments) = match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    (self.selection_set(&field.selection_set.node, nesting + 1)?, field.arguments.len())
                }
                Selection::InlineFragment(inline) => {
                    (self.selection_set(&inline.node.selection_set.node, nesting + 1)?, 0)
                }
                Selection::FragmentSpread(spread) => (self.fragment(&spread.node.fragment_name.node, nesting + 1)?, 0),
            };
            let own = 1usize.saturating_add(arguments).saturating_add(selection.node.directives().len());
            total.selections = total.selections.saturating_add(own).saturating_add(inner.selections);
            total.nesting = total.nesting.max(inner.nesting.saturating_add(1));
        }
        Ok(total)
    }

    /// The size of the fragment `name`, spread `nesting` levels below the start of the walk.
    fn fragment(&mut self, name: &'a Name, nesting: usize) -> Result<Size, ApiError> {
        if let Some(size) = self.measured.get(name) {
            return Ok(*size);
        }
        let Some(definition) = self.document.fragments.get(name) else {
            return Err(DomainError::invalid("query", format!("unknown fragment \"{name}\"")).into());
        };
        if !self.in_progress.insert(name) {
            return Err(DomainError::invalid("query", format!("fragment \"{name}\" spreads itself")).into());
        }
        let definition = &definition.node;
        let size = self.selection_set(&definition.selection_set.node, nesting);
        self.in_progress.remove(name);
        let mut size = size?;
        size.selections = size.selections.saturating_add(definition.directives.len());
        self.measured.insert(name, size);
        Ok(size)
    }
}

/// The operation execution would run, if it can be selected.
fn select_operation<'d>(document: &'d ExecutableDocument, name: Option<&str>) -> Option<&'d OperationDefinition> {
    match (&document.operations, name) {
        (DocumentOperations::Single(operation), None) => Some(&operation.node),
        (DocumentOperations::Single(_), Some(_)) => None,
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next().map(|op| &op.node)
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// Where a selection set sits: only a query's root fields may be exempt (introspection).
///
/// A fragment measures differently in the two places, so it is memoised once per scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    /// The root selection set of a query (or a fragment spread into it).
    QueryRoot,
    /// Anywhere else.
    Nested,
}

/// The measure of a selection set, relative to where it is spread: it does not depend on
/// the place, so a fragment's measure is computed once and reused.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    /// Deepest field nesting inside the set (1 for a set of leaf fields).
    depth: usize,
    complexity: usize,
    aliases: usize,
    directives: usize,
    /// Deepest nesting of fields, inline fragments and spreads together (see [`MAX_NESTING`]).
    nesting: usize,
}

impl Measure {
    /// Adds a sibling selection's measure: counts add up, depths take the maximum.
    fn add_sibling(&mut self, other: Measure) {
        self.depth = self.depth.max(other.depth);
        self.complexity = self.complexity.saturating_add(other.complexity);
        self.aliases = self.aliases.saturating_add(other.aliases);
        self.directives = self.directives.saturating_add(other.directives);
        self.nesting = self.nesting.max(other.nesting);
    }

    /// The same measure one nesting level further down (a fragment, which adds no depth).
    fn one_level_down(self) -> Measure {
        Measure { nesting: self.nesting.saturating_add(1), ..self }
    }
}

/// One walk over one operation, with its fragment memo.
struct Walker<'a> {
    shape: &'a SchemaShape,
    document: &'a ExecutableDocument,
    variables: &'a Variables,
    /// Default values of the operation's variables.
    variable_defaults: HashMap<&'a Name, &'a ConstValue>,
    default_list_size: usize,
    /// Measured fragments, by name and scope.
    measured: HashMap<(&'a Name, Scope), Measure>,
    /// Fragments on the current path: meeting one again is a cycle.
    in_progress: HashSet<&'a Name>,
}

impl<'a> Walker<'a> {
    fn new(
        shape: &'a SchemaShape,
        document: &'a ExecutableDocument,
        operation: &'a OperationDefinition,
        variables: &'a Variables,
        default_list_size: usize,
    ) -> Walker<'a> {
        let variable_defaults = operation
            .variable_definitions
            .iter()
            .filter_map(|definition| {
                let definition = &definition.node;
                definition.default_value.as_ref().map(|value| (&definition.name.node, &value.node))
            })
            .collect();
        Walker {
            shape,
            document,
            variables,
            variable_defaults,
            default_list_size,
            measured: HashMap::new(),
            in_progress: HashSet::new(),
        }
    }

    /// Measures a selection set whose fields belong to `parent` (`None`: type unknown) and
    /// that sits `nesting` levels below the operation (or the fragment measured).
    fn selection_set(
        &mut self,
        set: &'a SelectionSet,
        parent: Option<&'a TypeShape>,
        scope: Scope,
        nesting: usize,
    ) -> Result<Measure, ApiError> {
        // The walk recurses: stop before the stack could run out.
        if nesting > MAX_NESTING {
            return Err(ApiError::QueryTooDeep { limit: MAX_NESTING });
        }
        let mut total = Measure::default();
        for selection in &set.items {
            let measure = match &selection.node {
                Selection::Field(field) => self.field(&field.node, parent, scope, nesting)?,
                Selection::InlineFragment(inline) => {
                    let inline = &inline.node;
                    let parent = match &inline.type_condition {
                        Some(condition) => self.shape.object(&condition.node.on.node),
                        None => parent,
                    };
                    self.selection_set(&inline.selection_set.node, parent, scope, nesting + 1)?.one_level_down()
                }
                Selection::FragmentSpread(spread) => self.fragment(&spread.node.fragment_name.node, scope, nesting)?,
            };
            total.add_sibling(measure);
            total.directives = total.directives.saturating_add(selection.node.directives().len());
        }
        Ok(total)
    }

    /// Measures one field (its own directives are counted by the caller).
    fn field(
        &mut self,
        field: &'a Field,
        parent: Option<&'a TypeShape>,
        scope: Scope,
        nesting: usize,
    ) -> Result<Measure, ApiError> {
        let schema_field = parent.and_then(|parent| parent.fields.get(&field.name.node));
        let child_type = schema_field.and_then(|schema_field| self.shape.object(&schema_field.type_name));
        let children = self.selection_set(&field.selection_set.node, child_type, Scope::Nested, nesting + 1)?;

        let exempt = scope == Scope::QueryRoot && INTROSPECTION_ROOT_FIELDS.contains(&field.name.node.as_str());
        let (depth, complexity) = if exempt {
            (0, 0)
        } else {
            let multiplier = self.multiplier(field, schema_field);
            (children.depth.saturating_add(1), multiplier.saturating_mul(children.complexity).saturating_add(1))
        };
        Ok(Measure {
            depth,
            complexity,
            aliases: children.aliases.saturating_add(usize::from(field.alias.is_some())),
            directives: children.directives,
            nesting: children.nesting.saturating_add(1),
        })
    }

    /// Measures the fragment `name` spread `nesting` levels below the start of the walk.
    fn fragment(&mut self, name: &'a Name, scope: Scope, nesting: usize) -> Result<Measure, ApiError> {
        if let Some(measure) = self.measured.get(&(name, scope)) {
            return Ok(measure.one_level_down());
        }
        let Some(definition) = self.document.fragments.get(name) else {
            return Err(DomainError::invalid("query", format!("unknown fragment \"{name}\"")).into());
        };
        if !self.in_progress.insert(name) {
            return Err(DomainError::invalid("query", format!("fragment \"{name}\" spreads itself")).into());
        }
        let definition = &definition.node;
        let parent = self.shape.object(&definition.type_condition.node.on.node);
        let measure = self.selection_set(&definition.selection_set.node, parent, scope, nesting + 1);
        self.in_progress.remove(name);
        let measure = measure?;
        self.measured.insert((name, scope), measure);
        Ok(measure.one_level_down())
    }

    /// How many times a field's sub-selection is resolved, at most.
    fn multiplier(&self, field: &Field, schema_field: Option<&FieldShape>) -> usize {
        match schema_field {
            Some(schema_field) if !schema_field.page_size_arguments.is_empty() => schema_field
                .page_size_arguments
                .iter()
                .filter_map(|argument| self.page_size(field, argument.name.as_str()).or(argument.default))
                .max()
                // Paginated, but no size given and no default: as long as any list.
                .unwrap_or(self.default_list_size),
            Some(schema_field) if schema_field.is_list => LIST_LENGTH_ARGUMENTS
                .iter()
                .filter_map(|name| self.list_length(field, name))
                .max()
                .unwrap_or(self.default_list_size),
            Some(_) => 1,
            // Unknown field: no type information, but an explicit page size still counts.
            None => PAGE_SIZE_ARGUMENTS.iter().filter_map(|name| self.page_size(field, name)).max().unwrap_or(1),
        }
    }

    /// The length of the field's argument `name`, if it is a list (a literal, or a
    /// variable of the request or with a default in the operation).
    fn list_length(&self, field: &Field, name: &str) -> Option<usize> {
        match self.argument(field, name)? {
            ConstValue::List(items) => Some(items.len()),
            _ => None,
        }
    }

    /// The value of the field's argument `name` as a count, if given as an integer (a
    /// literal, or a variable of the request or with a default in the operation).
    fn page_size(&self, field: &Field, name: &str) -> Option<usize> {
        const_count(&self.argument(field, name)?)
    }

    /// The field's argument `name` with its variables resolved (from the request, else
    /// from the operation's defaults). Cloned once per field and argument, which keeps
    /// the walk linear in the document's (bounded) size.
    fn argument(&self, field: &Field, name: &str) -> Option<ConstValue> {
        let value = field.get_argument(name)?.node.clone();
        value
            .into_const_with(|variable| {
                self.variables
                    .get(&variable)
                    .or_else(|| self.variable_defaults.get(&variable).copied())
                    .cloned()
                    .ok_or(())
            })
            .ok()
    }
}

/// A constant as a count, if it is a number.
fn const_count(value: &ConstValue) -> Option<usize> {
    match value {
        ConstValue::Number(number) => Some(count(number)),
        _ => None,
    }
}

/// A number as a count: negative is 0, too large saturates.
fn count(number: &Number) -> usize {
    if let Some(n) = number.as_u64() {
        usize::try_from(n).unwrap_or(usize::MAX)
    } else if number.is_i64() {
        0
    } else {
        // Not an integer (execution rejects it); `as` saturates and maps NaN to 0.
        number.as_f64().map_or(0, |n| n.max(0.0) as usize)
    }
}

#[cfg(test)]
#[path = "limits_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use async_graphql::parser::parse_query;
    use serde_json::json;

    use super::*;

    /// The shape of the real schema.
    static SHAPE: LazyLock<SchemaShape> =
        LazyLock::new(|| SchemaShape::from_sdl(&crate::graphql::sdl()).expect("the real SDL has a shape"));

    /// The standard introspection query of graphql-js (`getIntrospectionQuery()`), as
    /// GraphiQL sends it.
    const INTROSPECTION_QUERY: &str = r#"
        query IntrospectionQuery {
          __schema {
            queryType { name }
            mutationType { name }
            subscriptionType { name }
            types { ...FullType }
            directives {
              name
              description
              locations
              args { ...InputValue }
            }
          }
        }

        fragment FullType on __Type {
          kind
          name
          description
          fields(includeDeprecated: true) {
            name
            description
            args { ...InputValue }
            type { ...TypeRef }
            isDeprecated
            deprecationReason
          }
          inputFields { ...InputValue }
          interfaces { ...TypeRef }
          enumValues(includeDeprecated: true) {
            name
            description
            isDeprecated
            deprecationReason
          }
          possibleTypes { ...TypeRef }
        }

        fragment InputValue on __InputValue {
          name
          description
          type { ...TypeRef }
          defaultValue
        }

        fragment TypeRef on __Type {
          kind
          name
          ofType {
            kind
            name
            ofType {
              kind
              name
              ofType {
                kind
                name
                ofType {
                  kind
                  name
                  ofType {
                    kind
                    name
                    ofType {
                      kind
                      name
                      ofType {
                        kind
                        name
                      }
                    }
                  }
                }
              }
            }
          }
        }
    "#;

    fn check_named(
        query: &str,
        operation_name: Option<&str>,
        variables: serde_json::Value,
    ) -> Result<QueryCost, ApiError> {
        let document = parse_query(query).expect("the test query parses");
        check(
            &SHAPE,
            &document,
            operation_name,
            &Variables::from_json(variables),
            &crate::config::Config::defaults().query_limits,
        )
    }

    fn check_query(query: &str) -> Result<QueryCost, ApiError> {
        check_named(query, None, json!({}))
    }

    /// The error code, or "OK".
    fn code(result: &Result<QueryCost, ApiError>) -> &'static str {
        match result {
            Ok(_) => "OK",
            Err(err) => err.code().as_str(),
        }
    }

    /// `task(id) { events(last: 1) { task { events(last: 1) { … __typename } } } }` with
    /// `fields` nested fields above the `__typename` leaf (depth `fields + 1`).
    fn task_events_chain(fields: usize) -> String {
        let mut selection = String::from("__typename");
        for level in (1..=fields).rev() {
            let field = match level {
                1 => r#"task(id: "t1")"#,
                _ if level % 2 == 0 => "events(last: 1)",
                _ => "task",
            };
            selection = format!("{field} {{ {selection} }}");
        }
        format!("{{ {selection} }}")
    }

    #[test]
    fn every_frontend_operation_passes_under_the_default_limits() {
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../frontend-schema/operations");
        // One document of every file, as codegen sees them: an operation may use a
        // fragment another file defines.
        let mut text = String::new();
        for entry in std::fs::read_dir(directory).expect("the operations directory exists") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|extension| extension == "graphql") {
                text.push_str(&std::fs::read_to_string(&path).expect("the operations file reads"));
                text.push('\n');
            }
        }
        let document = parse_query(&text).expect("the operations parse");
        let mut checked = 0;
        for (name, _) in document.operations.iter() {
            let name = name.map(Name::as_str);
            let result =
                check(&SHAPE, &document, name, &Variables::default(), &crate::config::Config::defaults().query_limits);
            assert!(result.is_ok(), "operation {name:?}: {result:?}");
            checked += 1;
        }
        assert!(checked > 0, "no frontend operation was found in {directory}");
    }

    #[test]
    fn the_standard_introspection_query_passes_under_the_default_limits() {
        let result = check_query(INTROSPECTION_QUERY);

        assert_eq!(result.ok(), Some(QueryCost::default()), "introspection is exempt from depth and complexity");
    }

    #[test]
    fn costs_are_measured_as_documented() {
        let cases = [
            ("a list field multiplies by the default list size", "{ workers { id name } me { subject } }", 43, 2),
            (
                "first multiplies; a connection's edges count once",
                "{ tasks(first: 5) { edges { node { id } } } }",
                16,
                4,
            ),
            ("the schema default of last applies", r#"{ task(id: "t1") { events { seq } } }"#, 22, 3),
            (
                "a variable's default in the operation applies",
                r#"query ($n: Int = 3) { task(id: "t1") { events(last: $n) { seq } } }"#,
                5,
                3,
            ),
            ("a negative page size counts as 0", r#"{ task(id: "t1") { events(last: -5) { seq } } }"#, 2, 3),
            (
                "an unknown field costs 1 and keeps its literal first",
                r#"{ task(id: "t1") { nope(first: 7) { a b } } }"#,
                16,
                3,
            ),
            (
                "fragments and inline fragments add no depth",
                "{ ...Me } fragment Me on Query { ... on Query { me { subject } } }",
                2,
                2,
            ),
            ("__typename counts like any field", "{ __typename me { __typename } }", 3, 2),
            ("nodes(ids:) counts one item per id", r#"{ nodes(ids: ["a", "b", "c"]) { nodeId } }"#, 4, 2),
            (
                "nodes(ids:) from a variable's default",
                r#"query ($ids: [ID!]! = ["a", "b"]) { nodes(ids: $ids) { nodeId } }"#,
                3,
                2,
            ),
        ];
        for (case, query, complexity, depth) in cases {
            let cost = check_query(query).unwrap_or_else(|err| panic!("{case}: {err:?}"));

            assert_eq!((cost.complexity, cost.depth), (complexity, depth), "{case}");
        }
    }

    #[test]
    fn nesting_task_and_events_beyond_twelve_levels_is_too_deep() {
        let at_limit = check_query(&task_events_chain(11));
        let beyond = check_query(&task_events_chain(12));

        assert_eq!(at_limit.map(|cost| cost.depth).ok(), Some(12), "12 levels are allowed");
        assert_eq!(code(&beyond), "QUERY_TOO_DEEP", "13 levels: {beyond:?}");
    }

    #[test]
    fn a_thousand_aliases_are_too_many() {
        let aliases: String = (0..1000).map(|i| format!("a{i}: me {{ subject }} ")).collect();

        let result = check_query(&format!("{{ {aliases} }}"));

        assert_eq!(code(&result), "TOO_MANY_ALIASES", "1,000 aliases: {result:?}");
    }

    #[test]
    fn a_huge_page_size_is_too_complex_whether_literal_or_variable() {
        let cases = [
            ("literal first", "{ tasks(first: 1000000) { edges { node { events(last: 1000) { seq } } } } }", json!({})),
            (
                "first from a variable",
                "query ($n: Int) { tasks(first: $n) { edges { node { events(last: 1000) { seq } } } } }",
                json!({ "n": 1_000_000 }),
            ),
            (
                "last from a variable",
                r#"query ($n: Int!) { task(id: "t1") { events(last: $n) { seq } } }"#,
                json!({ "n": 1_000_000 }),
            ),
            (
                "nested maximum integers saturate instead of overflowing",
                "{ tasks(first: 2147483647) { edges { node { events(last: 2147483647) { task { \
                 events(last: 2147483647) { task { events(last: 2147483647) { seq } } } } } } } } }",
                json!({}),
            ),
        ];
        for (case, query, variables) in cases {
            let result = check_named(query, None, variables);

            assert_eq!(code(&result), "QUERY_TOO_COMPLEX", "{case}: {result:?}");
        }
    }

    #[test]
    fn fragment_cycles_and_unknown_fragments_are_bad_user_input() {
        let cases = [
            ("a fragment spreading itself", r#"{ task(id: "t1") { ...A } } fragment A on Task { id ...A }"#),
            (
                "a cycle through another fragment and a field",
                r#"{ task(id: "t1") { ...A } }
                   fragment A on Task { events { ...B } }
                   fragment B on TaskEvent { task { ...A } }"#,
            ),
            ("a cycle at the query root", "{ ...Q } fragment Q on Query { me { subject } ...Q }"),
            (
                "a cycle in an unused fragment",
                "{ me { subject } } fragment A on Task { ...B } fragment B on Task { ...A }",
            ),
            ("an unknown fragment", r#"{ task(id: "t1") { ...Missing } }"#),
        ];
        for (case, query) in cases {
            let result = check_query(query);

            assert_eq!(code(&result), "BAD_USER_INPUT", "{case}: {result:?}");
        }
    }

    #[test]
    fn only_root_introspection_fields_are_exempt_from_depth() {
        let deep = "events(last: 1) { task { events(last: 1) { task { events(last: 1) { task { events(last: 1) \
                    { task { events(last: 1) { task { events(last: 1) { task { id } } } } } } } } } } } }";
        let too_deep = [
            (
                "a fragment named __schema spread deep",
                format!(r#"{{ task(id: "t1") {{ ...__schema }} }} fragment __schema on Task {{ {deep} }}"#),
            ),
            ("a field named __schema below the root", format!(r#"{{ task(id: "t1") {{ __schema {{ {deep} }} }} }}"#)),
            (
                "a __schema field in a fragment spread below the root",
                format!(r#"{{ task(id: "t1") {{ ...S }} }} fragment S on Task {{ __type {{ {deep} }} }}"#),
            ),
        ];
        for (case, query) in &too_deep {
            let result = check_query(query);

            assert_eq!(code(&result), "QUERY_TOO_DEEP", "{case}: {result:?}");
        }

        let exempt = [
            ("__schema at the root", format!("{{ __schema {{ {deep} }} }}")),
            ("__type in an inline fragment at the root", format!("{{ ... on Query {{ __type {{ {deep} }} }} }}")),
            (
                "__schema in a fragment spread at the root",
                format!("{{ ...S }} fragment S on Query {{ __schema {{ {deep} }} }}"),
            ),
        ];
        for (case, query) in &exempt {
            let result = check_query(query);

            assert_eq!(code(&result), "OK", "{case}: {result:?}");
        }
    }

    #[test]
    fn aliases_inside_introspection_still_count() {
        let aliases: String = (0..31).map(|i| format!("t{i}: types {{ name }} ")).collect();

        let result = check_query(&format!("{{ __schema {{ {aliases} }} }}"));

        assert_eq!(code(&result), "TOO_MANY_ALIASES", "31 aliases under __schema: {result:?}");
    }

    #[test]
    fn a_fragment_bomb_is_measured_once_per_fragment_and_rejected() {
        // F0 spreads F1 twice, F1 spreads F2 twice, …: 2^29 copies of F29 once expanded.
        let bomb = |leaf: &str| {
            let mut query = String::from(r#"{ task(id: "t1") { ...F0 } } "#);
            for level in 0..29 {
                let next = level + 1;
                query.push_str(&format!("fragment F{level} on Task {{ ...F{next} ...F{next} }} "));
            }
            query.push_str(&format!("fragment F29 on Task {{ {leaf} }}"));
            query
        };

        let with_alias = check_query(&bomb("a: id"));
        let without_alias = check_query(&bomb("id"));

        assert_eq!(code(&with_alias), "TOO_MANY_ALIASES", "bomb of aliased fields: {with_alias:?}");
        assert_eq!(code(&without_alias), "QUERY_TOO_COMPLEX", "bomb of plain fields: {without_alias:?}");
    }

    #[test]
    fn sixty_directives_are_too_complex() {
        let fields = "subject @include(if: true) ".repeat(60);

        let result = check_query(&format!("{{ me {{ {fields} }} }}"));

        assert!(
            matches!(&result, Err(ApiError::QueryTooComplex { measured, limit: 50 }) if measured == "60 directives"),
            "60 @include: {result:?}"
        );
    }

    #[test]
    fn limits_are_reported_aliases_first_then_depth_then_directives() {
        let aliases: String = (0..31).map(|i| format!("a{i}: me {{ subject }} ")).collect();
        let deep = task_events_chain(12);
        let deep_selection = deep.trim_start_matches('{').trim_end_matches('}');
        let directives = "me { subject @skip(if: false) } ".repeat(60);
        let cases = [
            ("aliases and depth", format!("{{ {aliases} {deep_selection} }}"), "TOO_MANY_ALIASES"),
            ("depth and directives", format!("{{ {directives} {deep_selection} }}"), "QUERY_TOO_DEEP"),
        ];
        for (case, query, expected) in &cases {
            let result = check_query(query);

            assert_eq!(code(&result), *expected, "{case}: {result:?}");
        }
        let directives_and_complexity =
            check_query(&format!("{{ {directives} tasks(first: 100000) {{ nodes {{ id }} }} }}"));
        assert!(
            matches!(&directives_and_complexity, Err(ApiError::QueryTooComplex { measured, .. }) if measured == "60 directives"),
            "directives and complexity: {directives_and_complexity:?}"
        );
    }

    #[test]
    fn long_fragment_chains_are_too_deep_without_exhausting_the_stack() {
        let chain = |length: usize| {
            let mut fragments: String =
                (0..length).map(|i| format!("fragment F{i} on Task {{ ...F{} }} ", i + 1)).collect();
            fragments.push_str(&format!("fragment F{length} on Task {{ id }}"));
            fragments
        };
        let cases = [
            ("a chain the operation spreads", format!(r#"{{ task(id: "t1") {{ ...F0 }} }} {}"#, chain(1000))),
            ("a chain no operation uses", format!("{{ me {{ subject }} }} {}", chain(1000))),
        ];
        for (case, query) in &cases {
            let result = check_query(query);

            assert!(matches!(result, Err(ApiError::QueryTooDeep { limit: MAX_NESTING })), "{case}: {result:?}");
        }
    }

    #[test]
    fn the_operation_name_selects_the_operation_to_check() {
        let document = "query Small { me { subject } } \
                        query Big { tasks(first: 1000000) { edges { node { id } } } }";
        let cases = [
            ("the small operation by name", Some("Small"), "OK"),
            ("the big operation by name", Some("Big"), "QUERY_TOO_COMPLEX"),
            ("no name in a document of two operations", None, "OK"),
            ("an unknown name", Some("Missing"), "OK"),
        ];
        for (case, name, expected) in cases {
            let result = check_named(document, name, json!({}));

            assert_eq!(code(&result), expected, "{case}: {result:?}");
        }
        let unselectable = check_named(document, Some("Missing"), json!({}));
        assert_eq!(unselectable.ok(), Some(QueryCost::default()), "an unknown name is left to execution");
    }

    /// `count` spreads of a fragment of `fields` fields, in an operation the request does
    /// not select: the shape of the request that cost seconds of validation.
    fn unselected_spreads(count: usize, fields: usize) -> String {
        let spreads = "...F ".repeat(count);
        let fields: String = (0..fields).map(|i| format!("f{i}: __typename ")).collect();
        format!("query Main {{ me {{ subject }} }} query Big {{ {spreads} }} fragment F on Query {{ {fields} }}")
    }

    #[test]
    fn an_unselected_operation_counts_towards_the_document_selections() {
        let attack = unselected_spreads(5_000, 5_000);

        let result = check_named(&attack, Some("Main"), json!({}));

        assert!(
            matches!(&result, Err(ApiError::QueryTooComplex { measured, limit: 2_000 }) if measured.ends_with(" selections")),
            "{result:?}"
        );
        let small = unselected_spreads(3, 10);
        assert_eq!(code(&check_named(&small, Some("Main"), json!({}))), "OK", "a small second operation is fine");
    }

    #[test]
    fn fragments_count_wherever_they_are_spread_and_spreads_count_too() {
        // 40 spreads of 50 fields: 40 × (1 + 50) = 2,040 selections, plus `me { subject }`.
        let over = check_named(&unselected_spreads(40, 50), Some("Main"), json!({}));
        // 30 spreads: 30 × 51 + 2 = 1,532.
        let under = check_named(&unselected_spreads(30, 50), Some("Main"), json!({}));

        assert!(
            matches!(&over, Err(ApiError::QueryTooComplex { measured, .. }) if measured == "2042 selections"),
            "{over:?}"
        );
        assert_eq!(code(&under), "OK", "{under:?}");
    }

    #[test]
    fn arguments_and_directives_count_as_selections() {
        let arguments: String = (0..2_000).map(|i| format!("a{i}: 1 ")).collect();
        let directives = "@include(if: true) ".repeat(2_000);
        let cases = [
            ("2,000 arguments on one field", format!("query A {{ me({arguments}) {{ subject }} }}")),
            (
                "2,000 directives in an unselected operation",
                format!("query A {{ me {{ subject }} }} query B {{ me {directives} {{ subject }} }}"),
            ),
        ];
        for (case, query) in &cases {
            let result = check_named(query, Some("A"), json!({}));

            assert_eq!(code(&result), "QUERY_TOO_COMPLEX", "{case}: {result:?}");
        }
    }

    #[test]
    fn a_fragment_no_operation_uses_is_bad_user_input() {
        let fields: String = (0..1_000).map(|i| format!("f{i}: __typename ")).collect();
        let query = format!("{{ me {{ subject }} }} fragment Unused on Query {{ {fields} }}");

        let result = check_query(&query);

        assert!(
            matches!(&result, Err(ApiError::Domain(DomainError::InvalidInput { reason, .. })) if reason.contains("\"Unused\" is never used")),
            "{result:?}"
        );
    }

    #[test]
    fn an_introspection_fragment_bomb_is_not_exempt_from_the_selections() {
        // Exempt from depth and complexity, but execution's validation would still inline
        // 2^29 copies of T29.
        let mut query = String::from("{ __schema { types { ...T0 } } } ");
        for level in 0..29 {
            let next = level + 1;
            query.push_str(&format!("fragment T{level} on __Type {{ ...T{next} ...T{next} }} "));
        }
        query.push_str("fragment T29 on __Type { name }");

        let result = check_query(&query);

        assert!(matches!(&result, Err(ApiError::QueryTooComplex { limit: 2_000, .. })), "{result:?}");
    }

    #[test]
    fn a_document_with_no_selectable_operation_is_still_bounded() {
        let document = unselected_spreads(5_000, 5_000);

        let result = check_named(&document, None, json!({}));

        assert_eq!(code(&result), "QUERY_TOO_COMPLEX", "{result:?}");
    }

    #[test]
    fn a_schema_shape_needs_a_parsable_sdl_with_a_query_type() {
        assert!(SchemaShape::from_sdl("type {").is_err(), "unparsable SDL");
        assert!(
            matches!(SchemaShape::from_sdl("type Foo { a: Int }"), Err(SchemaShapeError::MissingQueryType(_))),
            "no Query type"
        );
        assert!(SchemaShape::from_sdl("schema { query: Root } type Root { a: Int }").is_ok(), "a renamed query root");
    }
}
