        %cBN = arith.constant {{block}} : index
        %cWN = arith.constant {{warp}} : index
        %cb0 = arith.muli %nb, %cBN : index
        %w16 = arith.muli %warp, %cWN : index
        %wc0 = arith.addi %cb0, %w16 : index
        %eN = arith.muli %e, %cN : index
        %nm1 = arith.constant {{last}} : index
        %kw = arith.constant {{row_words}} : index
        %tc2 = arith.constant 2 : index
        %tpair = arith.muli %tig, %tc2 : index
{{tiles}}
