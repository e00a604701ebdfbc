# Tests that need a real cluster start it once (Minos.TestCluster.ensure_started!/0
# in their setup_all); it is stopped when the suite ends.
ExUnit.start(timeout: 120_000)
