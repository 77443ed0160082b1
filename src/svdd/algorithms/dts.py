"""DTS / DTS*: Diffusion Tree Sampling and Diffusion Tree Search (Jain, Sareen, Pedramfar,
Ravanbakhsh, NeurIPS 2025, arXiv 2506.20701, §3 and the project page).

The K-step reverse chain is a depth-K tree. A node at level ℓ holds a state x at t_ℓ (level K is
clean), a soft-value estimate v̂ and a visit count; an edge is one draw of the pretrained kernel.
Target ``π(x0) ∝ p_pre(x0)·exp(r(x0)/α)``, soft value ``V_t(x) = α·log E_pre[exp(r(x0)/α) | x_t = x]``.

Notation (code → paper):
  ``alpha``           α = 1/λ of the paper's Boltzmann policy ∝ exp(λ·v̂)
  ``max_children``    the child cap (the paper's maximum number of children per node), B
  ``num_rollouts``    rollouts (selection → expansion → rollout → backup) per tree
  ``value``           v̂(node); a clean leaf has v̂ = r(x0) (−∞ when its reward is invalid)
  ``visits``          N(node), rollouts through the node
  dummy root          Gaussian processes: level −1, its children are prior draws x_T ~ N(0, I)
                      (the paper's x_{T+1}); masked processes start at the all-mask state (level 0)

One rollout (numbered as in ``_rollouts``):
  1. Select: from the root, while the node has ``max_children`` children, move to a child drawn
     ∝ exp(v̂(c)/α) (``dts``) or to argmax v̂(c) (``dts-star``); children whose subtree is
     exhausted (every node full down to clean leaves) are skipped. A batch of
     ``rollouts_per_batch`` descents per tree is selected against the same values; greedy descents
     all follow the one best path, so in ``dts-star`` a batch fills the free child slots of the
     first open node on it at once (the descents that find no slot are dropped, not counted).
  2. Expand: draw one new child from the pretrained kernel p_pre(·|x) (the node's x̂0 is cached,
     so this costs no denoiser call).
  3. Roll out with p_pre to x0, adding every state to the tree (one denoiser call per new
     non-clean node).
  4. Back up: r(x0) at the leaf, then along the path the soft-Bellman backup with the children
     weighted by their visit counts (``backup="visits"``, the default):
         v̂(x) = α·log( Σ_{c∈C(x)} N(c)·exp(v̂(c)/α) / Σ_c N(c) )
     — exp(v̂(x)/α) is then the plain average of exp(r/α) over every rollout through x — or with
     every child weighted equally (``backup="mean"``, v̂(x) = α·log mean_c exp(v̂(c)/α), the form
     derived in ../shared/reference/frontier.md §3.1); α = 0: max. The paper's exact formula could
     not be checked (no public code); its nodes store a visit count.

Samples: ``dts`` returns ``num_samples`` descents of the tree that match the backup (step 1
without expansion, down to a clean leaf): a child is drawn ∝ N(c)·exp(v̂(c)/α) (``mean``:
∝ exp(v̂(c)/α)), so the products telescope and a descent ends at leaf ℓ with probability
exp(r(ℓ)/α)/Σ_leaves exp(r/α) (``mean``: exp(r(ℓ)/α)·Π_{ancestors a} n_a⁻¹ / exp(v̂(root)/α));
``DTSState.descent_probabilities`` computes that law exactly. ``dts-star`` returns the best
leaves of the tree (global top-``num_samples``, like best-of-n's global top-k; ``num_trees =
num_samples`` runs one independent search per sample instead).

**Bias by construction.** Neither backup is exact at a finite tree. The leaves come from an
adaptive proposal (expansion goes preferentially to high-value subtrees), and the descent law is a
self-normalised importance sampler over them. ``visits`` treats every rollout as a draw of p_pre,
so it over-weights the subtrees the search favoured (a small upward tilt, largest for a small cap);
``mean`` weights each child's estimate equally however its children were allocated, and a child
whose first rollout was poor keeps few children and a pessimistic value, which under-weights high
rewards — on the Gaussian mixture it gets *worse* with more rollouts at a fixed cap (measured in
docs/toys.md). Both are exact only in the limit of a full tree with a growing cap. Rollouts
within one batch (``rollouts_per_batch``) are selected against the same, not-yet-updated values.

Cost: nfe = the number of non-clean nodes created (each gets exactly one denoiser call, whose
x̂0 is cached for its later expansions; the masked root adds 1), i.e. the sum of rollout lengths
— at most ``num_rollouts·K`` per tree, less once the top of the tree is full; reward calls = one
per rollout. Memory: every state and its x̂0 (``(L, V)`` probabilities on masked processes).
Budget knob ``num_rollouts``. ``info["tree"]`` is a :class:`DTSState` (tensors plus JSON-able
metadata, ``save``/``load`` via safetensors, never a pickle); pass it back as ``tree=`` (the object,
or the path a ``save_tree=PATH`` run wrote: ``svdd sample --set save_tree=t.safetensors`` then
``--set tree=t.safetensors``) with more ``num_rollouts`` to continue the search (anytime).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

from ._common import Run, check_alpha, check_common, check_positive_int
from .registry import AlgorithmError, register

_NO = -1


# ------------------------------------------------------------------------------------------------
# small vectorised helpers (shared with the other tree / beam methods)
# ------------------------------------------------------------------------------------------------
def group_rank(ids: Tensor) -> Tensor:
    """For each entry, how many earlier entries have the same id (0, 1, 2, ... within a group)."""
    if ids.numel() == 0:
        return ids.clone()
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    new_group = torch.ones_like(sorted_ids, dtype=torch.bool)
    new_group[1:] = sorted_ids[1:] != sorted_ids[:-1]
    pos = torch.arange(ids.numel(), device=ids.device)
    start = torch.cummax(torch.where(new_group, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(ids)
    rank[order] = pos - start
    return rank


def boltzmann_choice(values: Tensor, eligible: Tensor, alpha: float, generator: Optional[torch.Generator]) -> Tensor:
    """values (n, C) -> index (n,): among ``eligible`` entries, a draw ∝ exp(values/α) (float64,
    Gumbel-max) or the argmax when α = 0 (first on ties). Entries with value −∞ (invalid) are
    chosen only when every eligible entry is −∞ (then uniformly / the first). Rows with no
    eligible entry return 0 (callers check)."""
    v = values.to(torch.float64)
    finite = eligible & torch.isfinite(v)
    use_finite = finite.any(1, keepdim=True)
    mask = torch.where(use_finite, finite, eligible)
    if alpha == 0:
        logits = torch.where(mask, torch.where(finite, v, torch.zeros_like(v)), torch.full_like(v, -math.inf))
        return logits.argmax(1)
    logits = torch.where(finite, v / alpha, torch.zeros_like(v))
    logits = torch.where(mask, logits - logits.masked_fill(~mask, -math.inf).amax(1, keepdim=True).clamp_min(-1e300),
                         torch.full_like(v, -math.inf))
    device = generator.device if generator is not None else v.device
    u = torch.rand(v.shape, generator=generator, device=device, dtype=torch.float64).to(v.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
    return (logits + gumbel).argmax(1)


# ------------------------------------------------------------------------------------------------
# the forest (tensor-only state, resumable)
# ------------------------------------------------------------------------------------------------
class DTSState:
    """A forest of search trees as plain tensors (capacity grows by doubling).

    Per node: ``state`` (x at t_level), ``x0_hat`` (cached denoiser output; unused for clean and
    dummy nodes), ``level`` (−1 dummy root, K clean), ``parent``, ``children`` (n, B) with −1
    padding, ``num_children``, ``value`` (v̂, float64), ``visits``, ``reward`` / ``valid`` (clean
    leaves), ``exhausted`` (clean, or full with every child exhausted), ``tree``. ``roots`` (T,).
    ``metadata``: kind, num_steps, max_children, alpha, rollouts, nfe so far."""

    TENSORS = ("state", "x0_hat", "level", "parent", "children", "num_children", "value", "visits", "reward",
               "valid", "exhausted", "tree", "roots")

    def __init__(self, tensors: dict, metadata: dict):
        self.size = int(metadata["num_nodes"])
        self.metadata = dict(metadata)
        for name in self.TENSORS:
            setattr(self, name, tensors.get(name))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def empty(cls, *, kind: str, num_steps: int, max_children: int, alpha: float, num_trees: int,
              state_example: Tensor, device) -> "DTSState":
        cap = max(16, 2 * num_trees)
        B = max_children
        t = {
            "state": torch.zeros((cap, *state_example.shape[1:]), dtype=state_example.dtype, device=device),
            "x0_hat": None,
            "level": torch.zeros(cap, dtype=torch.long, device=device),
            "parent": torch.full((cap,), _NO, dtype=torch.long, device=device),
            "children": torch.full((cap, B), _NO, dtype=torch.long, device=device),
            "num_children": torch.zeros(cap, dtype=torch.long, device=device),
            "value": torch.full((cap,), -math.inf, dtype=torch.float64, device=device),
            "visits": torch.zeros(cap, dtype=torch.long, device=device),
            "reward": torch.zeros(cap, dtype=torch.float64, device=device),
            "valid": torch.zeros(cap, dtype=torch.bool, device=device),
            "exhausted": torch.zeros(cap, dtype=torch.bool, device=device),
            "tree": torch.zeros(cap, dtype=torch.long, device=device),
            "roots": torch.arange(num_trees, device=device),
        }
        meta = {"format": "svdd-dts-1", "kind": kind, "num_steps": int(num_steps), "max_children": int(B),
                "alpha": float(alpha), "num_trees": int(num_trees), "num_nodes": 0, "backup": "visits",
                "rollouts": [0] * num_trees,
                "nfe": 0, "reward_calls": 0}
        return cls(t, meta)

    def _grow(self, need: int) -> None:
        cap = self.level.shape[0]
        if self.size + need <= cap:
            return
        new_cap = max(2 * cap, self.size + need)
        for name in self.TENSORS:
            t = getattr(self, name)
            if name == "roots" or t is None:
                continue
            fill = {"parent": _NO, "children": _NO, "value": -math.inf}.get(name, 0)
            grown = torch.full((new_cap, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
            grown[:cap] = t
            setattr(self, name, grown)

    def add(self, states: Tensor, level: int, parents: Tensor, trees: Tensor) -> Tensor:
        """Append nodes (all at one level) as new children of ``parents``; returns their ids."""
        n = states.shape[0]
        self._grow(n)
        ids = torch.arange(self.size, self.size + n, device=self.level.device)
        self.size += n
        self.state[ids] = states.to(self.state.dtype)
        self.level[ids] = level
        self.parent[ids] = parents
        self.tree[ids] = trees
        has_parent = parents >= 0
        if bool(has_parent.any()):
            p, c = parents[has_parent], ids[has_parent]
            pos = self.num_children[p] + group_rank(p)
            if bool((pos >= self.children.shape[1]).any()):   # guarded by the selection's claims
                raise RuntimeError("internal error: a tree node got more children than max_children")
            self.children[p, pos] = c
            self.num_children.index_add_(0, p, torch.ones_like(p))
        return ids

    def set_x0_hat(self, ids: Tensor, x0_hat: Tensor) -> None:
        if self.x0_hat is None:
            cap = self.level.shape[0]
            self.x0_hat = torch.zeros((cap, *x0_hat.shape[1:]), dtype=x0_hat.dtype, device=x0_hat.device)
        self.x0_hat[ids] = x0_hat

    def clone(self) -> "DTSState":
        return DTSState({k: (None if getattr(self, k) is None else getattr(self, k).clone()) for k in self.TENSORS},
                        {**self.metadata, "rollouts": list(self.metadata["rollouts"])})

    # -- persistence (no pickle) ----------------------------------------------------------------
    def to_tensors(self) -> dict:
        n = self.size
        return {k: (getattr(self, k) if k == "roots" else getattr(self, k)[:n]) for k in self.TENSORS
                if getattr(self, k) is not None}

    def save(self, path) -> dict:
        from ..runfolder import save_tensors

        return save_tensors(path, self.to_tensors(), {**self.metadata, "num_nodes": self.size})

    @classmethod
    def load(cls, path, device=None) -> "DTSState":
        from ..runfolder import load_tensors

        tensors, meta = load_tensors(path)
        if meta.get("format") != "svdd-dts-1":
            raise AlgorithmError(f"{path} is not a DTS tree saved by svdd (format {meta.get('format')!r})")
        if device is not None:
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return cls(tensors, meta)

    # -- queries ----------------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.size

    def leaves(self, tree: Optional[int] = None) -> Tensor:
        K = self.metadata["num_steps"]
        sel = self.level[: self.size] == K
        if tree is not None:
            sel &= self.tree[: self.size] == tree
        return torch.nonzero(sel).flatten()

    def descent_probabilities(self, alpha: Optional[float] = None) -> Tensor:
        """Exact probability that a Boltzmann descent (``dts`` sampling) ends at each node (one
        column per node; roots have 1): for checks that need no sampling noise."""
        alpha = self.metadata["alpha"] if alpha is None else alpha
        n = self.size
        prob = torch.zeros(n, dtype=torch.float64, device=self.level.device)
        prob[self.roots] = 1.0
        for lvl in range(-1, self.metadata["num_steps"]):
            nodes = torch.nonzero(self.level[:n] == lvl).flatten()
            if nodes.numel() == 0:
                continue
            ch = self.children[nodes]
            ok = ch >= 0
            v = torch.where(ok, self.value[ch.clamp_min(0)], torch.full(ch.shape, -math.inf, dtype=torch.float64,
                                                                         device=ch.device))
            if self.metadata.get("backup") == "visits":
                v = v + alpha * torch.log(self.visits[ch.clamp_min(0)].clamp_min(1).to(torch.float64))
            finite = ok & torch.isfinite(v)
            mask = torch.where(finite.any(1, keepdim=True), finite, ok)
            logits = torch.where(finite, v / alpha, torch.zeros_like(v))
            logits = torch.where(mask, logits, torch.full_like(v, -math.inf))
            p = torch.softmax(logits, 1).nan_to_num(0.0) * prob[nodes, None]
            prob.index_add_(0, ch[ok], p[ok])
        return prob


# ------------------------------------------------------------------------------------------------
# the search
# ------------------------------------------------------------------------------------------------
def _values_of_children(tree: DTSState, nodes: Tensor):
    ch = tree.children[nodes]
    ok = ch >= 0
    v = torch.where(ok, tree.value[ch.clamp_min(0)], torch.full(ch.shape, -math.inf, dtype=torch.float64,
                                                                 device=ch.device))
    return ch, ok, v


def _select(tree: DTSState, starts: Tensor, alpha: float, greedy: bool, generator) -> Tensor:
    """Step 1: the node each descent expands (−1: dropped, the tree had no room left for it)."""
    K, B = tree.metadata["num_steps"], tree.metadata["max_children"]
    cur = starts.clone()
    out = torch.full_like(starts, _NO)
    active = torch.ones_like(starts, dtype=torch.bool)
    claimed = torch.zeros(tree.size, dtype=torch.long, device=starts.device)
    for _ in range(K + 2):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        nodes = cur[idx]
        room = B - tree.num_children[nodes] - claimed[nodes]
        accept = (room > group_rank(nodes)) & (tree.level[nodes] < K)
        acc = idx[accept]
        out[acc] = cur[acc]
        claimed.index_add_(0, cur[acc], torch.ones_like(acc))
        active[acc] = False
        # the others move to a child whose subtree still has room
        go = idx[~accept]
        if go.numel() == 0:
            continue
        ch, ok, v = _values_of_children(tree, cur[go])
        eligible = ok & ~tree.exhausted[ch.clamp_min(0)]
        none = ~eligible.any(1)
        active[go[none]] = False
        pick = boltzmann_choice(v, eligible, 0.0 if greedy else alpha, generator)
        cur[go] = torch.where(none, cur[go], ch[torch.arange(go.numel(), device=go.device), pick])
    return out


def _rollouts(run: Run, tree: DTSState, ts: Tensor, expand: Tensor, generator) -> Tensor:
    """Steps 2–3: one new child of each node in ``expand``, then pretrained rollouts to x0; every
    state is added to the tree. Returns the leaf ids."""
    proc, K = run.process, tree.metadata["num_steps"]
    cur = expand.clone()
    for lvl in range(-1, K):
        sel = torch.nonzero(tree.level[cur] == lvl).flatten()
        if sel.numel() == 0:
            continue
        parents = cur[sel]
        if lvl == -1:
            xs = proc.prior(parents.numel(), generator)
        else:
            trans = proc.transition(tree.state[parents], ts[lvl], ts[lvl + 1], x0_hat=tree.x0_hat[parents])
            xs = trans.sample(generator)
        new = tree.add(xs, lvl + 1, parents, tree.tree[parents])
        if lvl + 1 < K:
            tree.set_x0_hat(new, proc.predict_x0(xs, ts[lvl + 1]))
        cur[sel] = new
    return cur


def _backup(run: Run, tree: DTSState, leaves: Tensor, alpha: float) -> None:
    """Step 4: leaf rewards, then soft-Bellman values and exhaustion along every path."""
    K, B = tree.metadata["num_steps"], tree.metadata["max_children"]
    r, ok = run.reward.evaluate(tree.state[leaves])
    r = r.to(torch.float64).to(leaves.device)
    ok = ok.to(leaves.device)
    tree.reward[leaves], tree.valid[leaves] = r, ok
    tree.value[leaves] = torch.where(ok, r, torch.full_like(r, -math.inf))
    tree.exhausted[leaves] = True
    tree.visits.index_add_(0, leaves, torch.ones_like(leaves))
    path = leaves
    for _ in range(K + 1):
        path = tree.parent[path]
        path = path[path >= 0]
        if path.numel() == 0:
            break
        tree.visits.index_add_(0, path, torch.ones_like(path))
        nodes = torch.unique(path)
        ch, has, v = _values_of_children(tree, nodes)
        n = tree.num_children[nodes].to(torch.float64)
        if alpha == 0:
            new_v = v.amax(1)
        elif tree.metadata.get("backup") == "visits":   # children weighted by their visit counts
            w = tree.visits[ch.clamp_min(0)].to(torch.float64) * has
            new_v = alpha * (torch.logsumexp(v / alpha + torch.log(w), 1) - torch.log(w.sum(1)))
        else:
            new_v = alpha * (torch.logsumexp(v / alpha, 1) - torch.log(n))
        tree.value[nodes] = new_v
        done = torch.where(has, tree.exhausted[ch.clamp_min(0)], torch.ones_like(has)).all(1)
        tree.exhausted[nodes] = done & (tree.num_children[nodes] >= B)


def _descend(tree: DTSState, starts: Tensor, alpha: float, generator) -> Tensor:
    """Boltzmann descents (no expansion) from ``starts`` down to clean leaves."""
    K = tree.metadata["num_steps"]
    cur = starts.clone()
    for _ in range(K + 1):
        idx = torch.nonzero(tree.level[cur] < K).flatten()
        if idx.numel() == 0:
            break
        ch, ok, v = _values_of_children(tree, cur[idx])
        if tree.metadata.get("backup") == "visits" and alpha > 0:
            v = v + alpha * torch.log(tree.visits[ch.clamp_min(0)].clamp_min(1).to(torch.float64))
        pick = boltzmann_choice(v, ok, alpha, generator)
        cur[idx] = ch[torch.arange(idx.numel(), device=idx.device), pick]
    return cur


def _new_tree(run: Run, kind: str, num_steps: int, max_children: int, alpha: float, num_trees: int,
              ts: Tensor, generator) -> DTSState:
    proc = run.process
    example = proc.prior(1, generator) if kind == "masked" else proc.prior(1, torch.Generator(
        device=getattr(proc, "device", torch.device("cpu"))).manual_seed(0))
    tree = DTSState.empty(kind=kind, num_steps=num_steps, max_children=max_children, alpha=alpha,
                          num_trees=num_trees, state_example=example, device=example.device)
    trees = torch.arange(num_trees, device=example.device)
    none = torch.full((num_trees,), _NO, dtype=torch.long, device=example.device)
    if kind == "masked":       # deterministic prior: the all-mask state is the root (level 0)
        roots = tree.add(example.expand(num_trees, *example.shape[1:]).clone(), 0, none, trees)
        tree.set_x0_hat(roots, proc.predict_x0(tree.state[roots], ts[0]))
    else:                      # the paper's dummy root x_{T+1}; its children are prior draws
        roots = tree.add(torch.zeros_like(example).expand(num_trees, *example.shape[1:]).clone(), -1, none, trees)
    tree.roots = roots
    return tree


def tree_search(process, reward_fn, *, num_samples, num_steps, num_rollouts, max_children, alpha, greedy,
                num_trees, rollouts_per_batch, tree, generator, callback, max_batch_size, method, backup="visits",
                save_tree=None):
    check_common(process, num_samples, num_steps, spec_name=method)
    check_positive_int("max_children", max_children)
    alpha = check_alpha(alpha)
    if backup not in ("visits", "mean"):
        raise AlgorithmError(f"backup must be 'visits' or 'mean', got {backup!r}")
    if not greedy and alpha == 0:
        raise AlgorithmError("dts samples ∝ exp(r/alpha) and needs alpha > 0; for alpha = 0 (a search) use dts-star")
    if not isinstance(num_rollouts, int) or isinstance(num_rollouts, bool) or num_rollouts < (0 if tree else 1):
        raise AlgorithmError(f"num_rollouts must be an integer >= 1, got {num_rollouts!r}")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    proc = run.process
    ts = proc.timesteps(num_steps)
    torch.set_grad_enabled(False)
    if isinstance(tree, (str, os.PathLike)):         # a tree saved by DTSState.save / save_tree=
        try:
            tree = DTSState.load(tree, device=getattr(proc, "device", None))
        except (OSError, ValueError) as err:
            raise AlgorithmError(f"cannot read the tree {str(tree)!r}: {err}") from None
    if tree is not None:
        if not isinstance(tree, DTSState):
            raise AlgorithmError("tree= must be the DTSState of an earlier dts / dts-star run (its info['tree']) "
                                 "or the path of one saved with save_tree=")
        meta = tree.metadata
        for key, want in (("kind", proc.kind), ("num_steps", num_steps), ("max_children", max_children),
                          ("backup", backup)):
            if meta.get(key) != want:
                raise AlgorithmError(f"cannot continue this tree: it was grown with {key}={meta.get(key)!r}, "
                                     f"not {want!r}; pass the same {key} (or start a new tree)")
        if num_trees is not None and num_trees != meta["num_trees"]:
            raise AlgorithmError(f"cannot continue this tree: it has {meta['num_trees']} trees, not {num_trees}")
        if alpha != meta["alpha"] and alpha > 0 and meta["alpha"] > 0:
            raise AlgorithmError(f"cannot continue this tree: its values were backed up at alpha={meta['alpha']}, "
                                 f"not {alpha}")
        tree = tree.clone()
    else:
        T = 1 if num_trees is None else num_trees
        check_positive_int("num_trees", T)
        tree = _new_tree(run, proc.kind, num_steps, max_children, alpha, T, ts, generator)
        tree.metadata["backup"] = backup
    T = tree.metadata["num_trees"]
    if num_samples % T:
        raise AlgorithmError(f"num_samples ({num_samples}) must be a multiple of num_trees ({T})")
    W = rollouts_per_batch if rollouts_per_batch is not None else max(1, 16 // T)
    check_positive_int("rollouts_per_batch", W)

    done = torch.zeros(T, dtype=torch.long)
    wave = 0
    while bool((done < num_rollouts).any()):
        want = (num_rollouts - done).clamp(max=W)
        roots = tree.roots.repeat_interleave(want.to(tree.roots.device))
        expand = _select(tree, roots, tree.metadata["alpha"], greedy, generator)          # 1. select
        live = expand >= 0
        ok_trees = tree.tree[roots[live]].cpu()
        if not bool(live.any()):
            break                                   # every tree is exhausted (enumerated)
        leaves = _rollouts(run, tree, ts, expand[live], generator)                         # 2.–3.
        _backup(run, tree, leaves, tree.metadata["alpha"])                                  # 4.
        counted = torch.bincount(ok_trees, minlength=T)
        stalled = (counted == 0) & (want > 0)       # exhausted trees stop
        done += counted + stalled.long() * (num_rollouts - done)
        run.record(leaf_reward_max=tree.reward[leaves].max())
        run.step_done(wave, ts[0], ts[-1], tree.state[leaves], None, rollouts=int(leaves.numel()))
        wave += 1
    meta = tree.metadata
    meta["num_nodes"] = tree.size
    meta["rollouts"] = [a + int(b) for a, b in zip(meta["rollouts"], _rollouts_per_tree(tree, T))]
    meta["nfe"] += run.process.nfe
    meta["reward_calls"] += int(run.reward.counters().get("reward_calls", 0))
    per_tree = num_samples // T
    if greedy:   # the best leaves of each tree (invalid ranks last; repeated if a tree has too few)
        picks = []
        for k in range(T):
            leaves = tree.leaves(k)
            r = tree.reward[leaves]
            score = torch.where(tree.valid[leaves], r, torch.full_like(r, -math.inf))
            order = leaves[torch.argsort(score, descending=True, stable=True)]
            picks.append(order[torch.arange(per_tree, device=order.device) % order.numel()])
        chosen = torch.cat(picks)
    else:        # Boltzmann descents of each tree
        chosen = _descend(tree, tree.roots.repeat_interleave(per_tree), meta["alpha"], generator)
    if save_tree is not None:
        tree.save(save_tree)
    x0 = tree.state[chosen]
    rewards = tree.reward[chosen]     # an invalid leaf reports the reward's declared invalid_value
    return run.result(x0, rewards.float(), None, tree=tree, num_trees=T, num_rollouts=num_rollouts,
                      max_children=max_children, alpha=meta["alpha"], tree_nodes=tree.size,
                      tree_rollouts_total=sum(meta["rollouts"]), tree_nfe_total=meta["nfe"],
                      root_value=[float(v) for v in tree.value[tree.roots].tolist()],
                      unique_leaves_sampled=int(torch.unique(chosen).numel()))


def _rollouts_per_tree(tree: DTSState, T: int) -> list:
    """Leaves per tree in total minus what metadata already counts (= rollouts of this call)."""
    counts = torch.bincount(tree.tree[tree.leaves()].cpu(), minlength=T).tolist()
    return [c - r for c, r in zip(counts, tree.metadata["rollouts"])]


@register("dts", budget_knob="num_rollouts")
def dts(process, reward_fn, *, num_samples, num_steps, num_rollouts=64, max_children=4, alpha=1.0,
        num_trees=None, rollouts_per_batch=None, tree=None, save_tree=None, backup="visits", generator=None,
        callback=None, max_batch_size=None):
    """Diffusion Tree Sampling: Boltzmann descents of one search tree (anytime; tree= continues)."""
    return tree_search(process, reward_fn, num_samples=num_samples, num_steps=num_steps, num_rollouts=num_rollouts,
                       max_children=max_children, alpha=alpha, greedy=False, num_trees=num_trees,
                       rollouts_per_batch=rollouts_per_batch, tree=tree, generator=generator, callback=callback,
                       max_batch_size=max_batch_size, method="dts", backup=backup, save_tree=save_tree)


@register("dts-star", budget_knob="num_rollouts")
def dts_star(process, reward_fn, *, num_samples, num_steps, num_rollouts=64, max_children=4, alpha=0.0,
             num_trees=None, rollouts_per_batch=None, tree=None, save_tree=None, generator=None, callback=None,
             max_batch_size=None):
    """Diffusion Tree Search: greedy selection; the best leaves of the tree (num_trees=num_samples: one per sample)."""
    return tree_search(process, reward_fn, num_samples=num_samples, num_steps=num_steps, num_rollouts=num_rollouts,
                       max_children=max_children, alpha=alpha, greedy=True, num_trees=num_trees,
                       rollouts_per_batch=rollouts_per_batch, tree=tree, generator=generator, callback=callback,
                       max_batch_size=max_batch_size, method="dts-star", save_tree=save_tree)


# ------------------------------------------------------------------------------------------------
# shared by the beam / search methods (dsearch, treeg, noise-trajectory-search, ...)
# ------------------------------------------------------------------------------------------------
def look_ahead(run: Run, x: Tensor, t, final: bool, num_mc_samples: int = 1, alpha: float = 0.0, generator=None):
    """The x̂0 look-ahead score of states ``x`` at time ``t``: ``(values, valid, x0_hat)`` with
    values = r(x̂0(x, t)) (one counted denoiser call; masked: argmax-filled, or the soft mean of
    ``num_mc_samples`` draws), or r(x) itself when ``final`` (x is clean; x0_hat = x). The x0_hat
    is what the next step's transition needs, so callers reuse it."""
    if final:
        v, ok = run.reward.evaluate(x)
        return v, ok, x
    from ..values.posterior_mean import PosteriorMeanValue

    x0_hat = run.process.predict_x0(x, t)
    pm = PosteriorMeanValue(run.process, run.reward, num_mc_samples=num_mc_samples, alpha=alpha, generator=generator)
    v, ok = pm.evaluate_from_x0_hat(x, x0_hat, t)
    return v, ok, x0_hat


def ranked(values: Tensor, valid: Tensor) -> Tensor:
    """Scores for top-k / argmax: the value, −inf where invalid (invalid never wins)."""
    from ._common import selection_scores

    return selection_scores(values.float(), valid)
