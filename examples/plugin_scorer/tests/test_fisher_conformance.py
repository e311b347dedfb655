"""Run ticketsearch's scorer conformance suite against this plugin: a subclass and a name is all it takes."""

from ticketsearch.testing import ScorerConformance


class TestFisherConformance(ScorerConformance):
    scorer_name = "fisher"  # looked up through the entry point, as users will
