/**
 * Fractional ordering: each todo has a numeric `order`; moving one sets
 * only its own `order` to a value between its new neighbours, so two people
 * reordering different todos never overwrite each other's moves.
 */

/** The `order` for a todo placed between `before` and `after` (either may be absent). */
export function between(before: number | undefined, after: number | undefined): number {
  if (before === undefined && after === undefined) return 1;
  if (before === undefined) return (after as number) - 1;
  if (after === undefined) return before + 1;
  return (before + after) / 2;
}

/** The `order` that moves item `index` of `orders` (sorted) by `delta` places, or undefined at the edge. */
export function moved(orders: number[], index: number, delta: -1 | 1): number | undefined {
  const target = index + delta;
  if (target < 0 || target >= orders.length) return undefined;
  // Moving up past item `target` lands between target-1 and target;
  // moving down past it lands between target and target+1.
  return delta < 0 ? between(orders[target - 1], orders[target]) : between(orders[target], orders[target + 1]);
}
