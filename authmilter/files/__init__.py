"""The files an operator writes, read and checked with file:line:key errors: the config (`config`),
policy files (`policy`), the signing file (`signing`) and key files (`keys`). Each turns text into
the core's values; none of them decides anything about mail."""
