export const TERMINAL = ["SUCCEEDED", "CANCELLED", "DEAD"];
export const STATUSES = ["SCHEDULED", "QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED", "CANCELLED", "DEAD"];

export function age(ms) {
  if (ms == null) return "–";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { hour12: false });
}

export function since(iso) {
  if (!iso) return "–";
  return `${age(Math.max(0, Date.now() - new Date(iso).getTime()))} ago`;
}

export const json = (value) => (value == null ? "null" : JSON.stringify(value, null, 2));
