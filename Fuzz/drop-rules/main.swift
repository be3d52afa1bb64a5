// Fuzzes the `strait drop` rule file parser. Any input may be refused; none may crash, and every
// rule it accepts must print as text that parses back to the same rule.
import FuzzSupport
import StraitDrop

FuzzMain.run { bytes in
    guard let set = try? DropRuleSet(parsingFile: bytes) else { return }
    for rule in set.rules {
        guard let again = try? DropRule(parsing: rule.description), again == rule else {
            fatalError("rule \(rule) does not parse back from its own text")
        }
    }
}
