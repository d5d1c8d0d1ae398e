// k6 provides `console` in every context, but @types/k6 does not declare it (and the DOM library,
// which would, describes browser APIs k6 does not have).
declare global {
  const console: {
    log(...data: unknown[]): void;
    info(...data: unknown[]): void;
    warn(...data: unknown[]): void;
    error(...data: unknown[]): void;
    debug(...data: unknown[]): void;
  };
}

export {};
