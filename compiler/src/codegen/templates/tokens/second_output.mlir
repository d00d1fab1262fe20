          %on{{r}} = arith.truncf {{total}} : f32 to bf16
          %o{{r}} = arith.extf %on{{r}} : bf16 to f32
          %wo{{r}} = arith.mulf %wv, %o{{r}} : f32
          %v{{r}} = arith.select %ok, %wo{{r}}, %zero : f32
          %pc{{r}} = arith.addi %gc, %cr{{r}} : index
          %pk{{r}} = arith.muli %pc{{r}}, %ck : index
          %pi{{r}} = arith.addi %pk{{r}}, %j : index
          memref.store %v{{r}}, %parts[%pi{{r}}] : memref<{{parts}}xf32, 3>
