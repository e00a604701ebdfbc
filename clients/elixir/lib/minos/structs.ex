defmodule Minos.Session do
  @moduledoc """
  A session as a node shows it.

    * `id`, `kind`: as created;
    * `owner`: the node running it (`nil` while unplaced);
    * `epoch`: ownership epoch, higher after every move;
    * `version`: number of committed state updates;
    * `status`: `:placed`, `:moving` (its owner is down or draining) or
      `:unplaced` (no node can take it);
    * `state`: its last committed state (string keys, as JSON gives them);
    * `created_at`, `updated_at`: `DateTime`s.
  """
  defstruct [:id, :kind, :owner, :epoch, :version, :status, :state, :created_at, :updated_at]

  @type t :: %__MODULE__{
          id: String.t(),
          kind: String.t(),
          owner: pos_integer() | nil,
          epoch: non_neg_integer(),
          version: non_neg_integer(),
          status: :placed | :moving | :unplaced | String.t(),
          state: term(),
          created_at: DateTime.t() | nil,
          updated_at: DateTime.t() | nil
        }

  @doc false
  def from_json(%{"id" => id, "kind" => kind} = map) when is_binary(id) and is_binary(kind) do
    {:ok,
     %__MODULE__{
       id: id,
       kind: kind,
       owner: map["owner"],
       epoch: map["epoch"],
       version: map["version"] || 0,
       status: status(map["status"]),
       state: map["state"],
       created_at: time(map["created_at"]),
       updated_at: time(map["updated_at"])
     }}
  end

  def from_json(_), do: :error

  defp status("placed"), do: :placed
  defp status("moving"), do: :moving
  defp status("unplaced"), do: :unplaced
  defp status(other), do: other

  defp time(text) when is_binary(text) do
    case DateTime.from_iso8601(text) do
      {:ok, time, _offset} -> time
      _ -> nil
    end
  end

  defp time(_), do: nil
end

defmodule Minos.Reply do
  @moduledoc """
  The answer to `Minos.call/4`: the session's `reply`, and the `owner` node
  and `epoch` it ran under (after a failover: another node, a higher epoch).
  """
  defstruct [:reply, :owner, :epoch]
  @type t :: %__MODULE__{reply: term(), owner: pos_integer(), epoch: non_neg_integer()}
end

defmodule Minos.Page do
  @moduledoc """
  One page of `Minos.list_page/2`: `sessions` in id order and `next`, the id
  to pass as `after:` for the following page (`nil` on the last one).
  """
  defstruct sessions: [], next: nil
  @type t :: %__MODULE__{sessions: [Minos.Session.t()], next: String.t() | nil}
end

defmodule Minos.Cluster do
  @moduledoc """
  The cluster as one node sees it (`Minos.cluster/1`).

    * `leader`: the leader's id (`nil` while there is none), `term`;
    * `answered_by`: the node that answered;
    * `quorum`: `true` when that node knows its table is current; without
      it every other node's status is `:unknown`;
    * `nodes`: `%{id, addr, status, sessions}` maps, `status` one of `:up`,
      `:draining`, `:down`, `:unknown`;
    * `sessions`: total; `by_status`: counts by session status.
  """
  defstruct [:leader, :term, :answered_by, :quorum, nodes: [], sessions: 0, by_status: %{}]

  @type node_info :: %{
          id: pos_integer(),
          addr: String.t(),
          status: :up | :draining | :down | :unknown | String.t(),
          sessions: non_neg_integer()
        }
  @type t :: %__MODULE__{
          leader: pos_integer() | nil,
          term: non_neg_integer(),
          answered_by: pos_integer(),
          quorum: boolean(),
          nodes: [node_info()],
          sessions: non_neg_integer(),
          by_status: %{String.t() => non_neg_integer()}
        }

  @doc false
  def from_json(%{"nodes" => nodes, "answered_by" => by} = map) when is_list(nodes) do
    {:ok,
     %__MODULE__{
       leader: map["leader"],
       term: map["term"],
       answered_by: by,
       quorum: map["quorum"] == true,
       nodes: Enum.map(nodes, &node_info/1),
       sessions: map["sessions"] || 0,
       by_status: map["by_status"] || %{}
     }}
  end

  def from_json(_), do: :error

  defp node_info(node) do
    %{
      id: node["id"],
      addr: node["addr"],
      status: status(node["status"]),
      sessions: node["sessions"]
    }
  end

  defp status("up"), do: :up
  defp status("draining"), do: :draining
  defp status("down"), do: :down
  defp status("unknown"), do: :unknown
  defp status(other), do: other
end
