//! The rollback property on a plain table of many column types: random
//! statements in one branch, then a global rollback, leave the table exactly
//! as it was.

use super::*;

/// Column types of the property table: name, PostgreSQL type, MariaDB type.
const TYPES: &[(&str, &str, &str)] = &[
    ("i16", "smallint", "smallint"),
    ("i64", "bigint", "bigint"),
    ("num", "numeric(12,3)", "decimal(12,3)"),
    ("txt", "text", "text"),
    ("vc", "varchar(20)", "varchar(20)"),
    ("flag", "boolean", "boolean"),
    ("ts", "timestamp(6)", "datetime(6)"),
    ("tstz", "timestamptz", "timestamp(6) NULL"),
    ("d", "date", "date"),
    ("j", "json", "json"),
    ("jb", "jsonb", "longtext"),
    ("b", "bytea", "blob"),
    ("u", "uuid", "uuid"),
    ("f", "double precision", "double"),
    ("f4", "real", "float"),
    ("tm", "time(6)", "time(6)"),
    ("arr", "int[]", "varchar(64)"),
];

fn value(col: usize) -> BoxedStrategy<Option<String>> {
    let some = match TYPES[col].0 {
        "i16" => any::<i16>().prop_map(|v| v.to_string()).boxed(),
        "i64" => any::<i64>().prop_map(|v| v.to_string()).boxed(),
        "num" => (-999_999_999i64..999_999_999, 0u32..1000).prop_map(|(i, f)| format!("{i}.{f:03}")).boxed(),
        "txt" => "[a-zA-Z0-9 _'%\\\\é\u{1F600}]{0,24}".boxed(),
        "vc" => "[a-z'\" ]{0,20}".boxed(),
        "flag" => prop_oneof![Just("1".to_owned()), Just("0".to_owned())].boxed(),
        "ts" | "tstz" => (2000i32..2030, 1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..1_000_000)
            .prop_map(|(y, mo, d, h, mi, us)| format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:07.{us:06}"))
            .boxed(),
        "d" => (1990i32..2100, 1u32..13, 1u32..29).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")).boxed(),
        "j" | "jb" => (any::<i32>(), "[a-z]{0,6}", any::<bool>())
            .prop_map(|(n, s, b)| format!(r#"{{"n": {n}, "s": "{s}", "b": {b}, "a": [1, 2.5, null]}}"#))
            .boxed(),
        "b" => proptest::collection::vec(any::<u8>(), 0..16)
            .prop_map(|v| v.iter().map(|b| format!("{b:02x}")).collect())
            .boxed(),
        "u" => any::<[u8; 16]>().prop_map(|b| uuid::Builder::from_random_bytes(b).into_uuid().to_string()).boxed(),
        "f" => (-1.0e12f64..1.0e12).prop_map(|v| v.to_string()).boxed(),
        "f4" => (-1.0e6f32..1.0e6).prop_map(|v| v.to_string()).boxed(),
        "tm" => (0u32..24, 0u32..60, 0u32..60, 0u32..1_000_000)
            .prop_map(|(h, m, s, us)| format!("{h:02}:{m:02}:{s:02}.{us:06}"))
            .boxed(),
        "arr" => proptest::collection::vec(proptest::option::of(-1000i32..1000), 0..5)
            .prop_map(|v| {
                let items: Vec<String> = v.iter().map(|x| x.map_or("NULL".into(), |x| x.to_string())).collect();
                format!("{{{}}}", items.join(","))
            })
            .boxed(),
        other => unreachable!("{other}"),
    };
    prop_oneof![1 => Just(None), 4 => some.prop_map(Some)].boxed()
}

fn full_row() -> impl Strategy<Value = Vec<Option<String>>> {
    (0..TYPES.len()).map(value).collect::<Vec<_>>()
}

#[derive(Debug, Clone)]
enum Filter {
    Key(i32, &'static str),
    Range(i32, i32),
}

#[derive(Debug, Clone)]
enum Op {
    Insert(i32, &'static str, Vec<Option<String>>),
    Update(Filter, Vec<(usize, Option<String>)>),
    Delete(Filter),
}

fn key() -> impl Strategy<Value = (i32, &'static str)> {
    (0..6i32, prop_oneof![Just("a"), Just("b")])
}

fn filter() -> impl Strategy<Value = Filter> {
    prop_oneof![
        key().prop_map(|(k, s)| Filter::Key(k, s)),
        (0..6i32, 0..4i32).prop_map(|(a, w)| Filter::Range(a, a + w))
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let set = proptest::collection::vec((0..TYPES.len()).prop_flat_map(|c| value(c).prop_map(move |v| (c, v))), 1..4);
    prop_oneof![
        (key(), full_row()).prop_map(|((k, s), r)| Op::Insert(k, s, r)),
        (filter(), set).prop_map(|(f, s)| Op::Update(f, s)),
        filter().prop_map(Op::Delete),
    ]
}

/// Initial rows of a case: key and values.
type Seed = Vec<((i32, &'static str), Vec<Option<String>>)>;

/// A case: initial rows, then statements in one branch.
fn case() -> impl Strategy<Value = (Seed, Vec<Op>)> {
    (proptest::collection::vec((key(), full_row()), 0..6), proptest::collection::vec(op(), 1..7))
}

/// How each dialect writes a text parameter into a column of each type.
fn cast(pg: bool, col: usize, p: &str) -> String {
    let (name, pg_type, _) = TYPES[col];
    match (pg, name) {
        (true, "b") => format!("decode({p}, 'hex')"),
        (true, _) => format!("CAST({p} AS {pg_type})"),
        (false, "b") => format!("UNHEX({p})"),
        (false, _) => p.to_owned(),
    }
}

fn prop_columns() -> Vec<&'static str> {
    let mut c = vec!["k1", "k2"];
    c.extend(TYPES.iter().map(|t| t.0));
    c
}

async fn prop_table<D: Business>(d: &D, pg: bool) {
    let cols: Vec<String> = TYPES.iter().map(|(n, p, m)| format!("{n} {}", if pg { p } else { m })).collect();
    d.exec(&format!(
        "CREATE TABLE prop (k1 int NOT NULL, k2 varchar(4) NOT NULL, {}, PRIMARY KEY (k1, k2))",
        cols.join(", ")
    ))
    .await;
}

fn insert_sql(pg: bool) -> String {
    let values: Vec<String> = (0..TYPES.len()).map(|c| cast(pg, c, "?")).collect();
    format!("INSERT INTO prop ({}) VALUES (CAST(? AS int), ?, {})", prop_columns().join(", "), values.join(", "))
}

fn filter_sql(f: &Filter) -> (&'static str, Vec<String>) {
    match f {
        Filter::Key(k, s) => ("k1 = CAST(? AS int) AND k2 = ?", vec![k.to_string(), (*s).to_owned()]),
        Filter::Range(a, b) => ("k1 BETWEEN CAST(? AS int) AND CAST(? AS int)", vec![a.to_string(), b.to_string()]),
    }
}

/// Runs one case: seed, statements in AT, commit the branch, roll the global
/// transaction back; the table must be exactly as seeded.
async fn prop_case<D: Business>(
    d: &D,
    c: &Coordinator,
    p: &Participant<D::B>,
    pg: bool,
    seed: &Seed,
    ops: &[Op],
) -> Result<(), TestCaseError>
where
    Option<String>: AtParam<<D::B as AtBackend>::Db>,
{
    d.exec("DELETE FROM prop").await;
    let mut keys = std::collections::HashSet::new();
    for ((k, s), row) in seed {
        if !keys.insert((*k, *s)) {
            continue;
        }
        insert_plain(d, pg, *k, s, row).await;
    }
    let cols = prop_columns();
    let original = d.snapshot("prop", &cols, "k1, k2").await;
    let xid = c.begin().await;
    let mut t = p.at.begin(&xid).await.unwrap();
    for op in ops {
        match op {
            Op::Insert(k, s, row) => {
                if !keys.insert((*k, *s)) {
                    continue; // would violate the key and abort the local transaction
                }
                let sql = d.q(&insert_sql(pg));
                let mut q = t.sql(&sql).bind(Some(k.to_string())).bind(Some((*s).to_owned()));
                for v in row {
                    q = q.bind(v.clone());
                }
                q.execute().await.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
            }
            Op::Update(f, set) => {
                let mut seen = std::collections::HashSet::new();
                let set: Vec<_> = set.iter().filter(|(c, _)| seen.insert(*c)).collect();
                let assignments: Vec<String> =
                    set.iter().map(|(c, _)| format!("{} = {}", TYPES[*c].0, cast(pg, *c, "?"))).collect();
                let (w, wp) = filter_sql(f);
                let sql = d.q(&format!("UPDATE prop SET {} WHERE {w}", assignments.join(", ")));
                let mut q = t.sql(&sql);
                for (_, v) in &set {
                    q = q.bind(v.clone());
                }
                for v in wp {
                    q = q.bind(Some(v));
                }
                q.execute().await.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
            }
            Op::Delete(f) => {
                let (w, wp) = filter_sql(f);
                let sql = d.q(&format!("DELETE FROM prop WHERE {w}"));
                let mut q = t.sql(&sql);
                for v in wp {
                    q = q.bind(Some(v));
                }
                let n = q.execute().await.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                if n > 0 {
                    keys.retain(|(k, s)| match f {
                        Filter::Key(fk, fs) => !(k == fk && s == fs),
                        Filter::Range(a, b) => !(a <= k && k <= b),
                    });
                }
            }
        }
    }
    t.commit().await.map_err(|e| TestCaseError::fail(format!("commit: {e}")))?;
    c.client().rollback(&xid, None).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let tx = wait_status(c.client(), &xid, "rolled_back", WAIT).await;
    prop_assert!(tx.branches.iter().all(|b| b.status == BranchStatus::RolledBack));
    let now = d.snapshot("prop", &cols, "k1, k2").await;
    prop_assert_eq!(now, original);
    Ok(())
}

async fn insert_plain<D: Business>(d: &D, pg: bool, k: i32, s: &str, row: &[Option<String>]) {
    // PostgreSQL strings are standard-conforming; MariaDB's take backslash escapes.
    let lit = |v: &Option<String>| match v {
        None => "NULL".to_owned(),
        Some(v) if pg => format!("'{}'", v.replace('\'', "''")),
        Some(v) => format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''")),
    };
    let values: Vec<String> = row
        .iter()
        .enumerate()
        .map(|(c, v)| if v.is_none() { "NULL".to_owned() } else { cast(pg, c, &lit(v)) })
        .collect();
    d.exec(&format!("INSERT INTO prop ({}) VALUES ({k}, '{s}', {})", prop_columns().join(", "), values.join(", ")))
        .await;
}

fn property_test<D: Business + 'static>(
    new: fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = D>>>,
    pg: bool,
) where
    Option<String>: AtParam<<D::B as AtBackend>::Db>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (d, c, p) = rt.block_on(async {
        let c = Coordinator::start(if pg { "at_prop" } else { "at_propm" }).await;
        let d = new("at_prop_b").await;
        prop_table(&d, pg).await;
        let p = participant::<D::B>(d.pool(), &c.c.url, "prop", LockRetry::default()).await;
        (d, c, p)
    });
    let cases = std::env::var("TANDEM_AT_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case(), |(seed, ops)| rt.block_on(prop_case(&d, &c, &p, pg, &seed, &ops)));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_statements_then_rollback_leave_the_table_as_it_was_on_postgres() {
    property_test::<PgBusiness>(|tag| Box::pin(PgBusiness::new(tag)), true);
}

#[test]
fn random_statements_then_rollback_leave_the_table_as_it_was_on_mariadb() {
    property_test::<MariaBusiness>(|tag| Box::pin(MariaBusiness::new(tag)), false);
}
