//! A user for deep memory tests: facts about people, each with the question it answers, every
//! question wrapped in one app's template ([`TEMPLATE`]) that pulls all query vectors toward
//! each person's memory of the help desk ([`desk`]). The plain embedding ranks that memory
//! first; an adapter can learn to undo the pull, for people it never saw.

/// The people.
pub const NAMES: [&str; 12] = [
    "Ana", "Bruno", "Chloe", "Dmitri", "Esme", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko",
    "Lars",
];

/// (memory, question) templates: the question names the person and the subject, not the
/// answer.
const FACTS: [(&str, &str); 6] = [
    ("{n} moved to {c} last spring.", "Where did {n} move to?"),
    (
        "{n}'s dog is a beagle called {p}.",
        "What is the name of {n}'s dog?",
    ),
    (
        "{n} works as a {j} at the hospital.",
        "What does {n} do for a living?",
    ),
    ("{n} is allergic to {a}.", "What is {n} allergic to?"),
    (
        "{n} plays the {i} in a band on Fridays.",
        "Which instrument does {n} play?",
    ),
    (
        "{n}'s birthday is on the {d} of March.",
        "When is {n}'s birthday?",
    ),
];

/// What every question starts with.
pub const TEMPLATE: &str = "Ticket from the in-app help desk, travel booking and payments \
                            queue, priority normal, customer wrote:";

/// The memory of `name` that the template matches (no question is about it).
pub fn desk(name: &str) -> String {
    format!("{name} asked the in-app help desk about a travel booking and a payment.")
}

/// (memory, question) for the first `people` of [`NAMES`] and the first `kinds` (at most 6)
/// kinds of fact, person by person.
pub fn facts(people: usize, kinds: usize) -> Vec<(String, String)> {
    let fill = |t: &str, n: &str, k: usize| {
        t.replace("{n}", n)
            .replace("{c}", ["Porto", "Oslo", "Lima", "Quito"][k % 4])
            .replace("{p}", ["Rex", "Momo", "Pip", "Olive"][k % 4])
            .replace("{j}", ["nurse", "surgeon", "porter", "cook"][k % 4])
            .replace("{a}", ["peanuts", "penicillin", "cats", "pollen"][k % 4])
            .replace("{i}", ["drums", "cello", "bass", "trumpet"][k % 4])
            .replace("{d}", ["third", "ninth", "twelfth", "twentieth"][k % 4])
    };
    let mut out = Vec::new();
    for (k, n) in NAMES.iter().take(people).enumerate() {
        for (m, q) in FACTS.iter().take(kinds) {
            out.push((fill(m, n, k), format!("{TEMPLATE} {}", fill(q, n, k))));
        }
    }
    out
}
