import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'vite';

// `npm run dev` sends /graphql to `deep-recall serve --allow-anonymous` on port 8080.
export default defineConfig({
  plugins: [vue()],
  server: { proxy: { '/graphql': { target: 'http://127.0.0.1:8080', ws: true } } },
});
