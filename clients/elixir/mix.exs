defmodule Minos.MixProject do
  use Mix.Project

  def project do
    [
      app: :minos,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      docs: [main: "Minos"]
    ]
  end

  # :jiffy comes from Debian's erlang-jiffy (no Hex here); :inets is OTP's
  # HTTP client (:httpc).
  def application do
    [
      mod: {Minos.Application, []},
      extra_applications: [:logger, :inets, :crypto, :jiffy]
    ]
  end

  # The example is compiled in tests, so the tests exercise it.
  defp elixirc_paths(:test), do: ["lib", "examples", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
