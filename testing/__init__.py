"""Helpers shared by the test suite (tests/) and the benchmarks (bench/): fleets, keys, real
git, real loopback servers. Importable, so neither reaches into the other's folder."""
