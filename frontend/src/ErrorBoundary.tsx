// A render error shows a page that says so (never a blank app).
import { Component, type ReactNode } from "react";

import { ErrorPage } from "./pages/Status";

export class ErrorBoundary extends Component<{ children: ReactNode }, { error: unknown }> {
  state = { error: null as unknown };

  static getDerivedStateFromError(error: unknown) {
    return { error };
  }

  render() {
    return this.state.error ? <ErrorPage error={this.state.error} /> : this.props.children;
  }
}
