defmodule Minos.TestApps do
  @moduledoc false
  # The Elixir app beside each node of the test cluster: node N's
  # Minos.ExternalHandler.Server serving the game (kind minotaur_ex) on
  # 127.0.0.1:(17800 + N), in this VM. Every node of the cluster is started
  # with its app's URL (serve_flags/0, through MINOS_SERVE_FLAGS, whose
  # {node} scripts/cluster.sh replaces with the node's id).
  #
  # The servers live under their own supervisor under the client's
  # application supervisor, not under a test process, so they outlive the
  # test modules; stop!/1 and ensure_all_running!/0 stop and restart one.

  alias Minos.ExternalHandler.Server

  @base 17800
  @kind "minotaur_ex"
  @handler Minotaur.GameEngine.Handler

  def kind, do: @kind
  def port(n), do: @base + n

  def serve_flags, do: "--external-kind #{@kind}=http://127.0.0.1:#{div(@base, 10)}{node}/minos"

  @doc "Starts the three apps (once per test run)."
  def ensure_started! do
    children = for n <- 1..3, do: {Server, handler: @handler, port: port(n)}

    spec = %{
      id: __MODULE__,
      start: {Supervisor, :start_link, [children, [strategy: :one_for_one, name: __MODULE__]]},
      type: :supervisor
    }

    case Supervisor.start_child(Minos.Supervisor, spec) do
      {:ok, _} -> :ok
      {:error, {:already_started, _}} -> :ok
    end
  end

  @doc "Stops node n's app (its port refuses connections when this returns)."
  def stop!(n) do
    :ok = Supervisor.terminate_child(__MODULE__, {Server, port(n)})
  end

  def running?(n) do
    Enum.any?(Supervisor.which_children(__MODULE__), fn {id, pid, _, _} ->
      id == {Server, port(n)} and is_pid(pid)
    end)
  end

  @doc "Restarts every app that stop!/1 stopped."
  def ensure_all_running! do
    for n <- 1..3, not running?(n) do
      {:ok, _} = Supervisor.restart_child(__MODULE__, {Server, port(n)})
    end

    :ok
  end
end
