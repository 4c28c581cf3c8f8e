import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// `npm run dev` serves the page with hot reload and sends the API to a server on :8080
// (`deep-recall serve --allow-anonymous`); `npm run build` writes dist/, which the server
// serves at / (its `web.dir`).
export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      '/graphql': { target: 'http://127.0.0.1:8080', ws: true },
    },
  },
  build: { outDir: 'dist', emptyOutDir: true },
});
