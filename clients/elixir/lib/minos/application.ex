defmodule Minos.Application do
  @moduledoc false
  # Starts the client's own :httpc profile, so its connection settings do
  # not change the caller's default profile.
  use Application

  @impl true
  def start(_type, _args) do
    profile = Minos.Client.profile()

    case :inets.start(:httpc, profile: profile) do
      {:ok, _} -> :ok
      {:error, {:already_started, _}} -> :ok
    end

    # Kept-alive connections are dropped after 4 s idle, before a node's
    # own 10 s idle limit closes one under a request. No pipelining; a
    # request never waits behind a call in progress on the same connection
    # (httpc opens another; test/minos/failover_test.exs checks it).
    :ok =
      :httpc.set_options(
        [
          keep_alive_timeout: 4_000,
          max_keep_alive_length: 1,
          max_sessions: 64,
          max_pipeline_length: 0
        ],
        profile
      )

    Supervisor.start_link([], strategy: :one_for_one, name: Minos.Supervisor)
  end
end
