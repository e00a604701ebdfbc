defmodule Minos.Error do
  @moduledoc """
  Why a request failed: `%Minos.Error{code: atom, message: string, status: integer | nil}`.

  It is also an exception, raised by `Minos.list/2` (a stream cannot return
  an error tuple).

  ## Codes a node answers

  The node's stable code becomes an atom; `status` is the HTTP status.

  | status | codes |
  | --- | --- |
  | 400 | `:invalid_input`, `:invalid_id`, `:invalid_kind`, `:unknown_kind`, `:bad_json`, `:bad_body`, `:bad_query`, `:invalid_key`, `:invalid_node` |
  | 401 | `:unauthorized` (no token, or one the nodes do not know) |
  | 403 | `:forbidden` (the token's role may not do this: a `client` token deleting a session) |
  | 404 | `:not_found`, `:no_such_node`, `:no_route` |
  | 408 | `:request_timeout` (the node gave up on the request after 75 s) |
  | 409 | `:exists`, `:stale_epoch`, `:stale_version`, `:duplicate_call`, `:not_allowed` |
  | 413 | `:state_too_large`, `:too_large` |
  | 415 | `:unsupported_media_type` |
  | 422 | `:rejected` (the session's handler refused the message or state) |
  | 503 | `:no_quorum`, `:unavailable` (nothing happened: safe to try again), `:outcome_unknown` |
  | 500 | `:internal` |

  A code this client does not know stays a string, so a newer node's codes
  still reach you.

  `:outcome_unknown` is its own code: the operation **may or may not have
  taken effect**, unlike `:unavailable` and `:no_quorum` (same 503 status),
  which guarantee it did not. The client never retries it; read the session
  to find out, or repeat a call with the same `key:` (see `Minos.call/4`).

  ## Codes of the client itself (`status: nil`)

    * `:unreachable`: no node of the client's list could be reached; the
      message names each node and why.
    * `:outcome_unknown`: the connection broke after a request that is not
      safe to repeat was sent (a call without a key, a create, a stop, a
      drain); it may or may not have taken effect.
    * `:bad_answer`: the node answered something that is not the API's JSON
      (`status` is then the HTTP status).
    * `:invalid_argument`: refused before sending (a value that is not JSON,
      a bad option).

  ## Examples

      iex> Minos.Error.from_answer(404, ~s({"error": {"code": "not_found", "message": "session ABC does not exist"}}))
      %Minos.Error{code: :not_found, message: "session ABC does not exist", status: 404}

      iex> Minos.Error.from_answer(503, ~s({"error": {"code": "outcome_unknown", "message": "outcome unknown: owner lost"}}))
      %Minos.Error{code: :outcome_unknown, message: "outcome unknown: owner lost", status: 503}

      iex> Minos.Error.from_answer(409, ~s({"error": {"code": "brand_new", "message": "m"}}))
      %Minos.Error{code: "brand_new", message: "m", status: 409}

      iex> Minos.Error.from_answer(502, "<html>Bad Gateway</html>").code
      :bad_answer

      iex> Exception.message(%Minos.Error{code: :exists, message: "session ABC already exists", status: 409})
      "exists (409): session ABC already exists"
  """

  defexception [:code, :message, :status]

  @type code :: atom() | String.t()
  @type t :: %__MODULE__{code: code(), message: String.t(), status: pos_integer() | nil}

  @server_codes ~w(invalid_input invalid_id invalid_kind unknown_kind bad_json bad_body
                   bad_query invalid_key invalid_node unauthorized forbidden refused
                   not_found no_such_node no_route request_timeout exists stale_epoch
                   stale_version duplicate_call not_allowed state_too_large too_large
                   unsupported_media_type rejected no_quorum unavailable outcome_unknown
                   internal)a

  @client_codes ~w(unreachable bad_answer invalid_argument)a

  @doc """
  The codes a node may answer, as atoms (what `from_answer/2` maps).

      iex> :outcome_unknown in Minos.Error.server_codes()
      true
  """
  @spec server_codes() :: [atom()]
  def server_codes, do: @server_codes

  @doc "The codes the client gives on its own (`status: nil`, or `:bad_answer`)."
  @spec client_codes() :: [atom()]
  def client_codes, do: @client_codes

  @impl true
  def message(%__MODULE__{code: code, message: message, status: nil}),
    do: "#{code}: #{message}"

  def message(%__MODULE__{code: code, message: message, status: status}),
    do: "#{code} (#{status}): #{message}"

  @doc """
  The error of a non-2xx answer with `status` and `body`. Never raises: a
  body that is not `{"error": {"code", "message"}}` gives `:bad_answer`
  (or `:request_timeout` for the node's bodiless 408).
  """
  @spec from_answer(pos_integer(), binary()) :: t()
  def from_answer(status, body) do
    case Minos.JSON.decode(body) do
      {:ok, %{"error" => %{"code" => code, "message" => message}}}
      when is_binary(code) and is_binary(message) ->
        %__MODULE__{code: to_code(code), message: message, status: status}

      _ when status == 408 ->
        %__MODULE__{
          code: :request_timeout,
          message: "the node timed out the request",
          status: 408
        }

      _ ->
        %__MODULE__{
          code: :bad_answer,
          message: "HTTP #{status} without an error body: #{excerpt(body)}",
          status: status
        }
    end
  end

  @doc false
  def to_code(code) when is_binary(code) do
    Enum.find(@server_codes, code, &(Atom.to_string(&1) == code))
  end

  @doc false
  def new(code, message, status \\ nil),
    do: %__MODULE__{code: code, message: message, status: status}

  @doc false
  def excerpt(body) when byte_size(body) > 200, do: inspect(binary_part(body, 0, 200)) <> "..."
  def excerpt(body), do: inspect(body)
end
